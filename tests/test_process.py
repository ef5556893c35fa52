"""The CLI as a real process: pipes, terminals, signals, exit codes, entry points, and
what gets imported before any model is needed."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_subprocess

from modernbert_cli import __version__
from modernbert_cli.errors import ExitStatus

PYTHON_M = [sys.executable, "-m", "modernbert_cli"]
HEAVY = ("torch", "transformers", "sentence_transformers")
LONG_TEXT = " ".join(["volcano"] * 600)  # far beyond the tiny model's 128 tokens
SGR = re.compile(r"\x1b\[([0-9;]*)m")
CRASH_MARKERS = (
    "Traceback",
    "BrokenPipeError",
    "Exception ignored",
    "KeyboardInterrupt",
    "terminate called",
)


def assert_no_crash(stderr: str) -> None:
    for marker in CRASH_MARKERS:
        assert marker not in stderr, stderr


def colour_codes(text: str) -> list[str]:
    """SGR parameters that set a colour (bold, dim, italic… are not colours)."""
    colours = []
    for match in SGR.finditer(text):
        params = match.group(1).split(";")
        colours += [
            p for p in params if p in ("38", "48") or (p.isdigit() and 30 <= int(p) % 60 <= 49)
        ]
    return colours


def run_on_pty(args: list[str], stream: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI with ``stream`` (stdout or stderr) on a terminal, the other piped."""
    master, slave = pty.openpty()
    other = subprocess.PIPE
    process = subprocess.Popen(
        [*PYTHON_M, *args],
        stdin=subprocess.DEVNULL,
        stdout=slave if stream == "stdout" else other,
        stderr=slave if stream == "stderr" else other,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    piped = (process.stderr if stream == "stdout" else process.stdout).read().decode()
    process.wait(timeout=120)
    return process.returncode, b"".join(chunks).decode(), piped


def wait_until(process: subprocess.Popen, proc_file: str, ready, fallback_s: float) -> None:
    """Wait until ``ready(/proc/PID/proc_file)`` (or the process ends); where that file
    cannot be read, wait ``fallback_s`` seconds instead."""
    if not read_proc(os.getpid(), proc_file):
        time.sleep(fallback_s)
        return
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if ready(read_proc(process.pid, proc_file)):
            return
        time.sleep(0.02)


def read_proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def embedded_beforehand(cli, *args: str) -> None:
    """Run a command in-process first, so that the real process after it finds every
    vector in the cache and starts without torch (many seconds on a busy machine).

    For tests of what a process reads and writes (pipes, terminals, FIFOs): that is the
    same whether the vectors come from the cache or the model. Tests of the model's own
    noise and of Ctrl-C while embedding do not use it.
    """
    result = cli(*args)
    assert result.code == ExitStatus.OK, result.stderr


# --- stdout is data, stderr is for people ------------------------------------------------


def test_table_when_piped_has_no_escape_codes_and_notes_go_to_stderr(
    cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: str
) -> None:
    monkeypatch.delenv("NO_COLOR")  # being piped alone must keep colour off
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"a cat\na dog\n{LONG_TEXT}\n")
    embedded_beforehand(cli, "similar", "a kitten", "-i", str(corpus), "-m", tiny_model)
    result = run_subprocess(
        ["similar", "a kitten", "-i", str(corpus), "-m", tiny_model, "--format", "table"],
        input=b"",
        env={"TERM": "xterm-256color"},
    )
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "a kitten" in stdout and "rank" in stdout and "score" in stdout
    assert "\x1b[" not in stdout
    assert "modernbert-cli:" not in stdout and "truncated" not in stdout
    assert stderr.startswith("modernbert-cli: ")
    assert "1 of 3 corpus text(s) were longer than 128 tokens and were truncated" in stderr
    assert "\x1b[" not in stderr
    assert_no_crash(stderr)


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log-file"])
def test_notes_go_to_stderr_terminal_or_not_and_the_spinner_only_to_a_terminal(
    terminal: bool,
) -> None:
    """One rule, the README's: notes (truncation counts) reach a log file too; the
    spinner and progress bars, which only make sense on a screen, do not; -q silences
    notes, never warnings."""
    import io
    from contextlib import nullcontext

    from rich.console import Console

    from modernbert_cli.cli import Session

    stderr = io.StringIO()
    session = Session(False, Console(file=stderr, force_terminal=terminal, width=100), None)
    session.note("3 of 5 text(s) were longer than 128 tokens")
    shown = SGR.sub("", stderr.getvalue())
    assert shown == "modernbert-cli: 3 of 5 text(s) were longer than 128 tokens\n"
    assert isinstance(session.loading("minilm"), nullcontext) is not terminal

    quiet = Session(True, Console(file=io.StringIO(), force_terminal=terminal), None)
    quiet.note("a note")
    quiet.warn("warning: a warning")
    assert SGR.sub("", quiet.stderr.file.getvalue()) == "modernbert-cli: warning: a warning\n"
    assert isinstance(quiet.loading("minilm"), nullcontext)

    readme = (ROOT / "README.md").read_text()
    assert "only when it is a terminal; `-q` leaves errors only" not in readme
    assert "whether or not it is a terminal" in readme  # notes
    assert "progress bars only when stderr is a\nterminal" in readme


def test_jsonl_on_stdout_and_nothing_on_stderr_with_quiet(tmp_path: Path, tiny_model: str) -> None:
    """No library chatter (warnings, load reports, progress bars) reaches either stream."""
    texts = ["a cat", "a dog", LONG_TEXT]
    source = tmp_path / "texts.txt"
    source.write_text("".join(f"{t}\n" for t in texts))
    result = run_subprocess(["embed", "-i", str(source), "-m", tiny_model, "-q"], input=b"")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["text"] for r in records] == texts
    assert all(len(r["embedding"]) == 32 for r in records)


@pytest.mark.parametrize("no_color", [True, False])
def test_no_color_is_honoured_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, no_color: bool
) -> None:
    """An error on a terminal: red unless NO_COLOR is set (no model needed)."""
    env = {"TERM": "xterm-256color"}
    if no_color:
        env["NO_COLOR"] = "1"
    else:
        monkeypatch.delenv("NO_COLOR")
    code, terminal, stdout = run_on_pty(["embed", "-i", "no-such-file.txt"], "stderr", env)
    assert code == ExitStatus.INPUT
    assert stdout == ""
    assert "error:" in terminal and "no-such-file.txt" in terminal
    assert SGR.search(terminal), "Rich did not see a terminal"
    assert bool(colour_codes(terminal)) is not no_color, repr(terminal)


def test_table_on_a_terminal_without_colour(cli, tiny_model: str) -> None:
    """On a terminal the table is the default; NO_COLOR keeps bold but drops the colours."""
    embedded_beforehand(cli, "matrix", "a cat", "a dog", "a car", "-m", tiny_model)
    code, terminal, stderr = run_on_pty(
        ["matrix", "a cat", "a dog", "a car", "-m", tiny_model],
        "stdout",
        {"NO_COLOR": "1", "TERM": "xterm-256color"},
    )
    assert code == 0, stderr
    assert "similarity, 3×3" in terminal and "┏" in terminal
    assert SGR.search(terminal), "Rich did not see a terminal"
    assert colour_codes(terminal) == [], repr(terminal)
    assert_no_crash(stderr)


# --- broken pipes and Ctrl-C -------------------------------------------------------------


def test_head_closing_the_pipe_ends_quietly(cli, tmp_path: Path, tiny_model: str) -> None:
    """`embed … | head -1` on output far larger than the pipe buffer: exit 141, no noise."""
    source = tmp_path / "texts.txt"
    source.write_text("".join(f"text number {i} about a cat on a mat\n" for i in range(300)))
    embedded_beforehand(cli, "embed", "-i", str(source), "-m", tiny_model, "-f", "jsonl")
    command = (
        f"set -o pipefail; {sys.executable} -m modernbert_cli embed -i {source} "
        f"-m {tiny_model} -f jsonl < /dev/null | head -1"
    )
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, cwd=ROOT, timeout=300, env=os.environ
    )
    stderr = result.stderr.decode()
    assert result.returncode == ExitStatus.BROKEN_PIPE == 141, stderr
    (line,) = result.stdout.decode().splitlines()
    assert json.loads(line)["text"] == "text number 0 about a cat on a mat"
    assert_no_crash(stderr)
    assert stderr == ""


def test_ctrl_c_while_reading_stdin(tiny_model: str) -> None:
    process = subprocess.Popen(
        [*PYTHON_M, "embed", "-m", tiny_model],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        process.stdin.write(b"a cat\n")
        process.stdin.flush()
        # Blocked in read(0, …): /proc/PID/syscall starts with the syscall number 0 and fd 0.
        wait_until(process, "syscall", lambda text: text.startswith("0 0x0 "), fallback_s=2)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == ExitStatus.INTERRUPTED == 130, stderr.decode()
    assert stdout == b""
    assert stderr.decode() == "modernbert-cli: error: interrupted\n"


def test_ctrl_c_while_embedding(tmp_path: Path, tiny_model: str) -> None:
    source = tmp_path / "long.txt"
    # 3000 different texts of 100 words (the cache embeds a repeated text once): seconds
    # of work for the tiny model, after loading it.
    lines = (f"{i} " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(99)) for i in range(3000))
    source.write_text("".join(f"{line}\n" for line in lines))
    process = subprocess.Popen(
        [*PYTHON_M, "embed", "-i", str(source), "-m", tiny_model],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        # The weights are memory-mapped once the model is loading; encoding follows.
        weights = str(Path(tiny_model, "model.safetensors").resolve())
        wait_until(process, "maps", lambda text: weights in text, fallback_s=8)
        time.sleep(0.3)
        assert process.poll() is None, "finished before it could be interrupted"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    # 130 from the CLI; or killed by SIGINT itself (which a shell also reports as 130),
    # as CPython does on exit when the KeyboardInterrupt passed through an exec() of a
    # string somewhere inside a library.
    assert process.returncode in (ExitStatus.INTERRUPTED, -signal.SIGINT), stderr.decode()
    assert stdout == b""
    assert stderr.decode() == "modernbert-cli: error: interrupted\n"


TORCH_IMPORT_PROBE = """
import os, signal, sys, threading
from modernbert_cli import model

fired = []
def fire():
    fired.append(True)
    os.kill(os.getpid(), signal.SIGINT)

threading.Timer(0.05, fire).start()
try:
    model._import_torch()
    outcome = "not interrupted"
except KeyboardInterrupt:
    outcome = "interrupted"
fired_during_the_import = bool(fired)
torch = sys.modules.get("torch")
print(outcome, fired_during_the_import, hasattr(torch, "nn"),
      signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_ctrl_c_during_the_torch_import_is_held_back_until_it_is_done() -> None:
    """A KeyboardInterrupt inside torch's C++ start-up can abort the process (SIGABRT,
    "terminate called after throwing … pybind11::error_already_set"): it is held back."""
    result = subprocess.run(
        [sys.executable, "-c", TORCH_IMPORT_PROBE],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        env=os.environ,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert_no_crash(stderr)
    # Interrupted, by a signal sent during the import, once torch was fully imported.
    assert result.stdout.decode().split() == ["interrupted", "True", "True", "True"]


def test_ctrl_c_outside_the_command_is_quiet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The entry point turns a Ctrl-C during start-up into exit 130 without a traceback."""
    import modernbert_cli.cli
    from modernbert_cli import __main__ as entry

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(modernbert_cli.cli, "run", interrupted)
    monkeypatch.setattr(sys, "argv", ["modernbert-cli", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        entry.main()
    assert exit_info.value.code == ExitStatus.INTERRUPTED
    assert capsys.readouterr().err == "modernbert-cli: error: interrupted\n"


# --- entry points ------------------------------------------------------------------------


def test_python_dash_m_version() -> None:
    result = run_subprocess(["--version"])
    assert result.returncode == 0
    assert result.stdout.decode() == f"modernbert-cli {__version__}\n"
    assert result.stderr == b""


def test_console_script() -> None:
    script = Path(sys.executable).parent / "modernbert-cli"
    assert script.is_file()
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, cwd=ROOT, timeout=60, env=os.environ
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == f"modernbert-cli {__version__}\n"
    usage = subprocess.run(
        [str(script), "embed", "--bogus"], capture_output=True, timeout=60, env=os.environ
    )
    assert usage.returncode == ExitStatus.USAGE
    assert usage.stderr.decode().startswith("modernbert-cli: error: No such option: --bogus")


# --- what answers without the heavy libraries --------------------------------------------

IMPORT_PROBE = f"""
import json, sys
from modernbert_cli.cli import run
heavy = {HEAVY!r}
before = sorted(m for m in heavy if m in sys.modules)
code = int(run(json.loads(sys.argv[1])))
after = sorted(m for m in heavy if m in sys.modules)
print()
print(json.dumps({{"code": code, "before": before, "after": after}}))
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["embed", "--help"], 0),
        (["similar", "--help"], 0),
        (["matrix", "-h"], 0),
        (["--version"], 0),
        (["similar", "--frobnicate", "a cat"], ExitStatus.USAGE),
        (["embed", "-i", "no-such-file.txt"], ExitStatus.INPUT),
        (["matrix", "a cat", "--against", "no-such-file.txt"], ExitStatus.INPUT),
        (["embed", "a cat", "-m", "./no-such-model-dir"], ExitStatus.MODEL),
    ],
)
def test_answers_without_importing_torch(args: list[str], code: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, json.dumps(args)],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        env=os.environ,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    report = json.loads(result.stdout.decode().splitlines()[-1])
    assert report == {"code": code, "before": [], "after": []}
    if code:
        assert stderr.count("\n") == 1, stderr
        assert stderr.startswith("modernbert-cli: error: ")
    else:
        assert stderr == ""
    if code == ExitStatus.USAGE:
        assert "--frobnicate" in stderr
    if code == ExitStatus.INPUT:
        assert "no-such-file.txt" in stderr


# --- inputs that cannot be read twice, as a shell gives them ------------------------------


def bash(script: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a bash script; ``$PY`` runs the CLI, ``$1``… are ``args``."""
    return subprocess.run(
        ["bash", "-c", script, "bash", *args],
        input=input,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PY": f"{sys.executable} -m modernbert_cli"},
        timeout=300,
    )


def test_process_substitution_is_read_once(cli, tmp_path: Path, tiny_model: str) -> None:
    """`embed -i <(printf …) -o keep.jsonl` once replaced keep.jsonl with an empty file."""
    embedded_beforehand(cli, "embed", "alpha", "beta", "-m", tiny_model)
    output = tmp_path / "keep.jsonl"
    output.write_text("an existing file\n")
    result = bash(
        '$PY embed -m "$1" -i <(printf \'alpha\\nbeta\\n\') -o "$2"', tiny_model, str(output)
    )
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["text"] for r in records] == ["alpha", "beta"]
    assert all(r["source"].startswith("/dev/fd/") for r in records)


def test_dev_stdin_is_read_once(cli, tiny_model: str) -> None:
    """`similar alpha -i /dev/stdin` once printed nothing with exit 0."""
    embedded_beforehand(cli, "similar", "alpha", "beta", "alpha", "-m", tiny_model)
    result = bash('$PY similar alpha -m "$1" -i /dev/stdin', tiny_model, input=b"beta\nalpha\n")
    assert result.returncode == 0, result.stderr.decode()
    hits = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [(h["rank"], h["text"], h["source"]) for h in hits] == [
        (1, "alpha", "/dev/stdin:2"),
        (2, "beta", "/dev/stdin:1"),
    ]


def test_a_named_fifo_is_read_once(cli, tmp_path: Path, tiny_model: str) -> None:
    """A FIFO as -i once hung: its second open waited for a writer that never came."""
    embedded_beforehand(cli, "matrix", "one", "two", "-m", tiny_model, "-f", "csv")
    fifo = tmp_path / "texts.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as stream:  # waits until the CLI opens it
            stream.write(b"one\ntwo\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    result = run_subprocess(["matrix", "-m", tiny_model, "-i", str(fifo), "-f", "csv"])
    writer.join(timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    header, *rows = result.stdout.decode().splitlines()
    assert header == ",one,two"
    assert [row.split(",")[0] for row in rows] == ["one", "two"]


def test_argument_bytes_that_are_not_utf8() -> None:
    result = run_subprocess(["embed", "fine", b"\xff\xfe bad"])  # type: ignore[list-item]
    assert result.returncode == ExitStatus.INPUT
    assert result.stdout == b""
    assert result.stderr == (
        b"modernbert-cli: error: <arg>:2: invalid UTF-8 (byte 0xff); convert it to UTF-8\n"
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/dev/zero", "/dev/zero: binary file, not text"),
        ("<(tr '\\0' a < /dev/zero)", ":1: a line longer than 64 MiB"),
    ],
    ids=["zero", "endless-line"],
)
def test_an_endless_input_stops_with_one_line(source: str, message: str, tiny_model: str) -> None:
    """`embed -i /dev/zero` once grew memory without end."""
    result = bash(f'$PY embed -m "$1" -i {source}', tiny_model)
    stderr = result.stderr.decode()
    assert result.returncode == ExitStatus.INPUT, stderr
    assert stderr.startswith("modernbert-cli: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
