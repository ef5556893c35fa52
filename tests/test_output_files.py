"""Where output goes: files replaced atomically (their mode, owner and symlinks kept),
devices and FIFOs written into, temporary files removed on SIGTERM, and a full disk or a
file size limit as one-line errors."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_error
from test_process import wait_until

from modernbert_cli import render
from modernbert_cli.errors import ExitStatus

TEXTS = ["A man is eating food.", "A woman plays the violin.", "The new movie is awesome."]
PYTHON_M = [sys.executable, "-m", "modernbert_cli"]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def one_line_error(stderr: bytes, *fragments: str) -> None:
    text = stderr.decode()
    assert text.startswith("modernbert-cli: error: "), text
    assert text.count("\n") == 1, text
    assert "Traceback" not in text and "internal error" not in text, text
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def embed_to(cli, tiny_model):
    """`embed -m <tiny> TEXTS -o PATH ARGS…`, expected to succeed."""

    def run(path: Path | str, *args: str):
        result = cli("embed", "-m", tiny_model, *TEXTS, "-o", str(path), *args)
        assert result.code == ExitStatus.OK, result.stderr
        return result

    return run


# --- an existing file: replaced, keeping what it was -------------------------------------


def test_an_existing_file_keeps_its_mode(embed_to, tmp_path):
    path = tmp_path / "private.jsonl"
    path.write_text("old\n")
    path.chmod(0o600)

    embed_to(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().splitlines()) == len(TEXTS)


def test_a_new_file_gets_the_usual_mode(embed_to, tmp_path):
    path = tmp_path / "new.jsonl"
    old_mask = os.umask(0o027)
    try:
        embed_to(path)
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@root_only
def test_an_existing_file_keeps_its_owner(embed_to, tmp_path):
    path = tmp_path / "theirs.jsonl"
    path.write_text("old\n")
    os.chown(path, 65534, 65534)  # nobody

    embed_to(path)

    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)
    assert len(path.read_text().splitlines()) == len(TEXTS)


def test_a_symlink_is_written_through(embed_to, tmp_path):
    """The link stays a link; its target is replaced (atomically, beside the target)."""
    real = tmp_path / "data"
    real.mkdir()
    target = real / "vectors.jsonl"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target)

    embed_to(link)

    assert link.is_symlink() and link.resolve() == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert len(target.read_text().splitlines()) == len(TEXTS)
    assert leftovers(tmp_path) == leftovers(real) == []


def test_a_dangling_symlink_creates_its_target(embed_to, tmp_path):
    target = tmp_path / "made.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)

    embed_to(link)

    assert link.is_symlink()
    assert len(target.read_text().splitlines()) == len(TEXTS)


def test_an_npy_behind_a_symlink_gets_its_description_beside_the_link(embed_to, tmp_path):
    target = tmp_path / "real.npy"
    link = tmp_path / "link.npy"
    link.symlink_to(target)

    embed_to(link)

    assert link.is_symlink()
    assert np.load(target).shape == (len(TEXTS), 32)
    assert json.loads((tmp_path / "link.npy.json").read_text())["rows"] == len(TEXTS)


# --- devices and FIFOs: written into, never replaced -------------------------------------


def _mknod(path: Path, major: int, minor: int) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("this container may not make device files")


@root_only
def test_a_null_device_stays_a_device(embed_to, tmp_path):
    null = tmp_path / "null.jsonl"
    _mknod(null, 1, 3)  # what /dev/null is

    embed_to(null)

    assert stat.S_ISCHR(null.stat().st_mode)
    assert leftovers(tmp_path) == []


@root_only
@pytest.mark.parametrize("name", ["full.jsonl", "full.npy"])
def test_a_full_device_is_an_output_error_and_stays_a_device(cli, tiny_model, tmp_path, name):
    full = tmp_path / name
    _mknod(full, 1, 7)  # what /dev/full is: every write fails with ENOSPC

    result = cli("embed", "-m", tiny_model, *TEXTS, "-o", str(full))

    assert_error(result, ExitStatus.OUTPUT, str(full), "No space left on device")
    assert stat.S_ISCHR(full.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no description either


def _read_fifo(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as stream:
            received.append(stream.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader, received


def test_a_fifo_is_written_into(embed_to, tmp_path):
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    reader, received = _read_fifo(fifo)

    embed_to(fifo)

    reader.join(timeout=60)
    records = [json.loads(line) for line in received[0].decode().splitlines()]
    assert [r["text"] for r in records] == TEXTS
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert leftovers(tmp_path) == []


def test_an_npy_to_a_fifo_is_whole(embed_to, tmp_path):
    """A FIFO cannot seek back to fix the header: the rows are spooled, then sent."""
    import io

    fifo = tmp_path / "out.npy"
    os.mkfifo(fifo)
    reader, received = _read_fifo(fifo)

    embed_to(fifo)

    reader.join(timeout=60)
    assert np.load(io.BytesIO(received[0])).shape == (len(TEXTS), 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]  # no description


# --- SIGTERM -----------------------------------------------------------------------------


def test_sigterm_while_writing_leaves_no_temporary_file(tmp_path, tiny_model):
    """SIGTERM still kills (as SIGTERM), after the temporary file is removed; the file
    that was there stays as it was."""
    source = tmp_path / "long.txt"
    lines = (f"{i} " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(99)) for i in range(3000))
    source.write_text("".join(f"{line}\n" for line in lines))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.npy"
    out.write_bytes(b"old content\n")
    process = subprocess.Popen(
        [*PYTHON_M, "embed", "-i", str(source), "-m", tiny_model, "-o", str(out), "--no-cache"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        # Embedding: the weights are mapped, and the temporary file is there.
        weights = str(Path(tiny_model, "model.safetensors").resolve())
        wait_until(process, "maps", lambda text: weights in text, fallback_s=8)
        deadline = time.monotonic() + 120
        while not leftovers(out_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "finished before it could be stopped"
        assert leftovers(out_dir), "no temporary file to remove"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGTERM, stderr.decode()
    assert stdout == b""
    assert out.read_bytes() == b"old content\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["out.npy"]  # no temporary file


def test_the_sigterm_handler_is_there_only_while_a_file_is_written(tmp_path):
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("something in this test run handles SIGTERM already")
    hangup = signal.getsignal(signal.SIGHUP)  # SIG_IGN under nohup: given back as it was
    with render.open_output(str(tmp_path / "a.txt")) as stream:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
        with render.open_output(str(tmp_path / "b.txt")):
            pass
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # a still open
        stream.write("a")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is hangup


def test_a_handler_set_by_the_caller_stays_theirs(tmp_path):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with render.open_output(str(tmp_path / "a.txt")):
            assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- a full disk, a file size limit ------------------------------------------------------


def _to_dev_full(args: list[str]) -> subprocess.CompletedProcess:
    with open("/dev/full", "wb") as full:
        return subprocess.run(
            [*PYTHON_M, *args],
            stdin=subprocess.DEVNULL,
            stdout=full,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            timeout=300,
            env=os.environ,
        )


def test_stdout_on_a_full_disk_is_an_output_error(cli, tiny_model):
    # Cached first, so that the process needs no model: only its output is under test.
    assert cli("embed", "-m", tiny_model, *TEXTS).code == ExitStatus.OK

    result = _to_dev_full(["embed", "-m", tiny_model, *TEXTS])

    assert result.returncode == ExitStatus.OUTPUT, result.stderr.decode()
    one_line_error(result.stderr, "cannot write to stdout", "No space left on device")


def test_a_table_on_a_full_disk_is_an_output_error():
    result = _to_dev_full(["cache"])
    assert result.returncode == ExitStatus.OUTPUT, result.stderr.decode()
    one_line_error(result.stderr, "cannot write to stdout", "No space left on device")


def test_stdout_over_the_file_size_limit_is_an_output_error(tiny_model, tmp_path):
    """`ulimit -f 1` (1 KiB): writing more fails with EFBIG, as Python ignores SIGXFSZ.
    (No cache: its file would meet the limit first.)"""
    texts = " ".join(f"'{t}'" for t in TEXTS)
    command = (
        f"ulimit -f 1; exec {sys.executable} -m modernbert_cli embed -m {tiny_model} {texts} "
        "--no-cache < /dev/null > out.jsonl"
    )
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, cwd=tmp_path, timeout=300, env=os.environ
    )
    assert result.returncode == ExitStatus.OUTPUT, result.stderr.decode()
    one_line_error(result.stderr, "cannot write to stdout", "File too large")


@pytest.mark.parametrize("name", ["out.jsonl", "out.npy"])
def test_a_file_over_the_size_limit_is_an_output_error_and_the_old_one_stays(
    cli, tiny_model, tmp_path, name
):
    """The same limit, set in this process around one command: a real EFBIG half-way."""
    import resource

    out = tmp_path / name
    out.write_text("old content\n")
    many = [f"text number {i}" for i in range(200)]  # far more than 1 KiB of output
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        result = cli("embed", "-m", tiny_model, *many, "--no-cache", "-o", str(out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    assert_error(result, ExitStatus.OUTPUT, f"-o {out}", "File too large")
    assert out.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
