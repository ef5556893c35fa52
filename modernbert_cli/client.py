"""Talking to a warm ``modernbert-cli serve``: where its socket is, the wire format, its life.

A server is found by a *key* made of the model, the settings that change its
vectors and the fingerprint of the model's files, so a command only ever uses a
server that would give it the very numbers it would compute itself: replace a
model's weights and its old server is no longer asked. This module imports
neither torch nor sentence-transformers: the client side of a command stays light.

The protocol, over a Unix domain socket: each message is a 4-byte big-endian
length and that many bytes of UTF-8 JSON. A reply carries ``"ok": true`` or an
``"error"``; vectors travel as base64 of little-endian float32, so they arrive
bit for bit as the server computed them.

One server runs per key: it holds an exclusive lock on ``KEY.lock`` (which also
records its pid and HTTP address) for its whole life, so a lock that nobody holds
means a dead server, and a socket that does not answer in time means a busy or
paused one — never a reason to delete it.

>>> client = ServerClient(socket_path(key), key)  # doctest: +SKIP
>>> client.info()["model"]  # doctest: +SKIP
'minilm'
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Messages larger than this are refused (and never sent by clients).
MAX_MESSAGE_BYTES = 256 << 20
# Texts per request (OpenAI's own cap) and characters per text a server takes; a client
# sends larger jobs as several requests. A model reads a few thousand tokens of a text,
# so a text this long is rare (a command embeds one longer than this in-process).
MAX_INPUTS = 2048
MAX_INPUT_CHARS = 16 << 20
# JSON with ensure_ascii writes at most 12 bytes per character (a surrogate pair).
_MAX_REQUEST_CHARS = (MAX_MESSAGE_BYTES - (1 << 20)) // 12
CONNECT_TIMEOUT_S = 2.0
# A server answers `info` at once even while its model is busy (the model runs in a
# thread of its own), so a server silent this long is paused (SIGSTOP, Ctrl-Z) or hung:
# work in-process rather than wait.
HANDSHAKE_TIMEOUT_S = 3.0
# Once it has answered, a request may wait for other clients' work and a cold
# torch.compile: be patient.
REPLY_TIMEOUT_S = 600.0
# How long `serve --detach` waits for the new server to answer (a cold start imports
# torch and loads the weights).
START_TIMEOUT_S = 300.0
# How long a starting server waits for a lock held by someone merely looking at it.
_LOCK_WAIT_S = 0.5
# A detached server inherits its starter's lock as this file descriptor.
LOCK_FD_ENV = "MODERNBERT_CLI_SERVER_LOCK_FD"


class ServerError(Exception):
    """The server could not be reached, or failed mid-request: work in-process instead."""


class UnknownOp(ServerError):
    """The server is of an older version that lacks this request: ask it the old way."""


class NotAnswering(ServerError):
    """A server accepted the connection but did not answer in time: busy, paused or hung."""


class ServerRunning(ServerError):
    """Another server holds this key's lock; ``record`` says which (pid, model, http)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        where = f"pid {record['pid']}" if record.get("pid") else "starting"
        if record.get("http"):
            where += f", {record['http']}"
        self.where = where
        super().__init__(f"a server for this model and settings already runs ({where})")


def runtime_dir() -> Path:
    """A folder only this user can enter: $XDG_RUNTIME_DIR/modernbert-cli, else /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        folder = Path(base) / "modernbert-cli"
    else:
        import tempfile

        folder = Path(tempfile.gettempdir()) / f"modernbert-cli-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # In a shared /tmp the name could be taken first: use only a real folder of ours.
    status = os.lstat(folder)
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        raise ServerError(f"{folder} is not a folder of this user's; refusing to use it")
    os.chmod(folder, 0o700)
    return folder


def usable_runtime_dir() -> Path:
    """:func:`runtime_dir`, or a one-line :class:`UsageError` saying why there is none."""
    from modernbert_cli.errors import UsageError

    try:
        return runtime_dir()
    except (OSError, ServerError) as error:
        raise UsageError(f"no runtime folder for servers: {error}") from None


def server_key(model: str, settings: dict[str, Any], fingerprint: str) -> str:
    """Which server can serve a command: same model, vector-changing settings and files.

    ``fingerprint`` is :func:`modernbert_cli.cache.fingerprint` of the model's folder,
    name and ``settings``: new weights under the same path make a new key, so a server
    of the old weights is never asked (and its answers never cached as the new one's).
    """
    payload = json.dumps({"model": model, "fingerprint": fingerprint, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def socket_path(key: str) -> Path:
    return runtime_dir() / f"{key}.sock"


def lock_path(key: str) -> Path:
    return runtime_dir() / f"{key}.lock"


def log_path(key: str) -> Path:
    return runtime_dir() / f"{key}.log"


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ServerError(f"request of {len(data):,} bytes is over the server's limit")
    sock.sendall(struct.pack(">I", len(data)) + data)


def receive(sock: socket.socket, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any] | None:
    """One message, or None when the peer closed the connection cleanly first."""
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    (length,) = struct.unpack(">I", head)
    if length > limit:
        raise ValueError(f"message of {length:,} bytes is over the limit of {limit:,}")
    body = _read_exactly(sock, length)
    if body is None:
        raise ConnectionError("connection closed mid-message")
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    chunks, remaining = [], count
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            if remaining == count:
                return None
            raise ConnectionError("connection closed mid-message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def pack_vectors(vectors: Any) -> dict[str, Any]:
    import numpy as np

    array = np.ascontiguousarray(vectors, dtype="<f4")
    return {"shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def unpack_vectors(message: dict[str, Any]) -> Any:
    import numpy as np

    data = base64.b64decode(message["data"])
    return np.frombuffer(data, dtype="<f4").reshape(message["shape"]).copy()


def request_parts(texts: list[str]) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of ``texts`` that each fit one request to a server."""
    for index, text in enumerate(texts):
        if len(text) > MAX_INPUT_CHARS:
            raise ServerError(
                f"text {index + 1} has {len(text):,} characters, over the server's "
                f"limit of {MAX_INPUT_CHARS:,}"
            )
    parts, start, chars = [], 0, 0
    for index, text in enumerate(texts):
        full = index - start >= MAX_INPUTS or chars + len(text) > _MAX_REQUEST_CHARS
        if index > start and full:
            parts.append((start, index))
            start, chars = index, 0
        chars += len(text)
    if start < len(texts):
        parts.append((start, len(texts)))
    return parts


class ServerClient:
    """One command's connection to a server, made on first use.

    With ``key`` the server is asked who it is first, within a short timeout, and used
    only if it holds that key (and, with ``fingerprint``, reports those model files).
    """

    def __init__(
        self,
        path: Path,
        key: str | None = None,
        timeout: float = REPLY_TIMEOUT_S,
        fingerprint: str | None = None,
    ) -> None:
        self.path = path
        self.key = key
        self.fingerprint = fingerprint
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connection(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                sock.connect(str(self.path))
            except OSError as error:
                sock.close()
                if isinstance(error, ConnectionRefusedError):
                    # Nobody listens on this file (a live server listens before its
                    # socket gets this name): a dead server's. Remove it, so the next
                    # command does not stop to try it again.
                    self.path.unlink(missing_ok=True)
                raise ServerError(f"no server on {self.path} ({error.strerror or error})") from None
            self._sock = sock
            if self.key is not None:
                info = self._exchange({"op": "info"}, min(self.timeout, HANDSHAKE_TIMEOUT_S))
                if info.get("key") != self.key or (
                    self.fingerprint is not None and info.get("fingerprint") != self.fingerprint
                ):
                    self.close()
                    raise ServerError(f"the server on {self.path} runs another model or settings")
        return self._sock

    def _exchange(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        sock = self._sock
        assert sock is not None
        sock.settimeout(timeout)
        try:
            send(sock, message)
            reply = receive(sock)
        except TimeoutError:
            self.close()
            raise NotAnswering(
                f"the server on {self.path} did not answer within {timeout:g} s "
                "(busy, paused or hung)"
            ) from None
        except (OSError, ValueError) as error:
            self.close()
            raise ServerError(f"the server failed mid-request ({error})") from None
        if reply is None:
            self.close()
            raise ServerError("the server closed the connection mid-request")
        if not reply.get("ok"):
            reason = str(reply.get("error", "no reason"))
            if reason == f"unknown op {message.get('op')!r}":
                raise UnknownOp(reason)
            raise ServerError(f"the server refused the request: {reason}")
        return reply

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self._connection()
        return self._exchange(message, self.timeout)

    def info(self) -> dict[str, Any]:
        return self.request({"op": "info"})

    def embed(self, texts: list[str], prompt: str | None, task: str | None) -> tuple[Any, Any]:
        """Raw float32 vectors and truncation flags, as the server's model computes them.

        A job larger than one request allows goes as several requests, in order.
        """
        import numpy as np

        vectors, truncated = [], []
        for start, stop in request_parts(texts):
            part = texts[start:stop]
            reply = self.request({"op": "embed", "texts": part, "prompt": prompt, "task": task})
            got, cut = unpack_vectors(reply), np.asarray(reply["truncated"], dtype=bool)
            if len(got) != len(part) or len(cut) != len(part):
                raise ServerError("the server answered for a different number of texts")
            vectors.append(got)
            truncated.append(cut)
        if not vectors:
            return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=bool)
        return np.concatenate(vectors), np.concatenate(truncated)

    def similar(
        self,
        queries: list[str],
        corpus: list[str],
        *,
        top_k: int | None,
        threshold: float | None,
        metric: str,
        truncate_dim: int | None,
        cache: tuple[str, int] | None,
    ) -> dict[str, Any]:
        """The corpus ranked for each query by the server, which also asks the cache.

        ``cache``: the cache file and bound this command would use, or None. The reply
        has ``hits`` (per query, ``[index, score]`` best first), ``by_role`` (``[role,
        texts, truncated]`` for queries and documents) and ``warnings`` (about the cache).
        """
        reply = self.request(
            {
                "op": "similar",
                "queries": queries,
                "corpus": corpus,
                "top_k": top_k,
                "threshold": threshold,
                "metric": metric,
                "truncate_dim": truncate_dim,
                "cache": None if cache is None else {"path": cache[0], "max_bytes": cache[1]},
            }
        )
        hits = reply.get("hits")
        if not isinstance(hits, list) or len(hits) != len(queries):
            raise ServerError("the server answered for a different number of queries")
        return reply

    def search(self, request: dict[str, Any]) -> dict[str, Any]:
        """A ``similar --passages`` over files and folders, walked and ranked by the server
        (:meth:`~modernbert_cli.server.Backend.search` says what ``request`` holds). The
        reply has ``hits`` (per query, ``[index, score, path, start, end, text]`` best
        first), ``by_role``, ``events`` (warnings and skips, in order); or ``redo``."""
        reply = self.request({**request, "op": "search"})
        hits = reply.get("hits")
        if "redo" not in reply and (
            not isinstance(hits, list) or len(hits) != len(request["queries"])
        ):
            raise ServerError("the server answered for a different number of queries")
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- one server per key: the lock --------------------------------------------------------


@dataclass
class ServerLock:
    """An exclusive ``flock`` on ``KEY.lock``, held by a server for its whole life."""

    key: str
    path: Path
    fd: int | None

    def write(self, record: dict[str, Any]) -> None:
        """Say who holds it (pid, model, HTTP address), for ``serve status`` and errors."""
        assert self.fd is not None
        data = json.dumps({**record, "pid": os.getpid()}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def update(self, **changes: Any) -> None:
        self.write({**_read_record(self.path), **changes})

    def release(self) -> None:
        """Remove the lock file (still holding it, so no one can be mid-take) and let go."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                if _same_file(self.fd, self.path):
                    self.path.unlink()
            self.close()

    def close(self) -> None:
        """Close this process's handle; a detached server that inherited it keeps holding it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_server(key: str, record: dict[str, Any]) -> ServerLock:
    """Take the lock of ``key``'s server, or raise :class:`ServerRunning`.

    A detached server adopts the lock its starter took for it (``LOCK_FD_ENV``).
    ``record`` (model, http) is written into the lock file with this pid.
    """
    lock = _inherited_lock(key)
    path = lock_path(key)
    deadline = time.monotonic() + _LOCK_WAIT_S
    while lock is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            # `serve status` holds a free lock for an instant to look: wait that out.
            if time.monotonic() > deadline:
                raise ServerRunning(_read_record(path)) from None
            time.sleep(0.02)
            continue
        if _same_file(fd, path):
            lock = ServerLock(key, path, fd)
        else:  # removed by the server that held it, after we opened it: take the new one
            os.close(fd)
    lock.write({**record, "started": time.time()})
    return lock


def _inherited_lock(key: str) -> ServerLock | None:
    value = os.environ.pop(LOCK_FD_ENV, None)
    if value is None or not value.isdigit():
        return None
    fd, path = int(value), lock_path(key)
    try:
        if not _same_file(fd, path):
            return None
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return ServerLock(key, path, fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder(key: str) -> tuple[bool | None, dict[str, Any]]:
    """Whether a live process holds ``key``'s lock (None: no lock file) and its record.

    A lock nobody holds is a dead server's: its socket and lock file are removed here,
    under the lock, so no server can be starting meanwhile.
    """
    path = lock_path(key)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, {}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read_record(path)
        if _same_file(fd, path):
            socket_path(key).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        return False, {}
    finally:
        os.close(fd)


# --- managing servers (for `serve --detach`, `serve status`, `serve stop`) ---------------


def is_alive(path: Path, key: str | None = None) -> bool:
    """Whether a server answers on ``path`` (for ``key``, when given)."""
    if not path.exists():
        return False
    connection = ServerClient(path, key, timeout=HANDSHAKE_TIMEOUT_S)
    try:
        connection.info()
        return True
    except ServerError:
        return False
    finally:
        connection.close()


def server_status(key: str) -> dict[str, Any] | None:
    """What runs for ``key``, as plain data, or None when nothing does.

    Keys: ``key``, ``socket``, ``state`` ("running", "not answering": busy or paused,
    "starting": loading its model), ``pid``, ``model``, ``http`` (URL or None),
    ``started``; when it answered also ``requests``, ``idle_timeout``, ``fingerprint``.
    A dead server's socket is removed (``state`` "stale" is returned once for it).
    """
    path = socket_path(key)
    held, record = _holder(key)
    status: dict[str, Any] = {
        "key": key,
        "socket": str(path),
        "pid": record.get("pid"),
        "model": record.get("model"),
        "http": record.get("http"),
        "started": record.get("started"),
    }
    if held is False:
        return None
    if not path.exists():
        return {**status, "state": "starting"} if held else None
    connection = ServerClient(path, timeout=HANDSHAKE_TIMEOUT_S)
    try:
        info = connection.info()
    except NotAnswering:
        return {**status, "state": "not answering"}
    except ServerError:
        if held:  # its socket is not made yet, or was removed under it
            return {**status, "state": "starting"}
        path.unlink(missing_ok=True)  # no lock, nobody listens: a dead server's
        return {**status, "state": "stale"}
    finally:
        connection.close()
    info.pop("ok", None)
    return {**status, **{k: v for k, v in info.items() if v is not None}, "state": "running"}


def running_servers() -> tuple[list[dict[str, Any]], list[Path]]:
    """Every server of this user (see :func:`server_status`), and the stale sockets removed."""
    folder = runtime_dir()
    keys = {p.name.removesuffix(".sock") for p in folder.glob("*.sock")}
    keys |= {p.name.removesuffix(".lock") for p in folder.glob("*.lock")}
    found, stale = [], []
    for key in sorted(keys):
        had_socket = socket_path(key).exists()
        status = server_status(key)
        if status is not None and status["state"] != "stale":
            found.append(status)
        elif had_socket and not socket_path(key).exists():
            stale.append(socket_path(key))
    return found, stale


def stop_server(key: str, timeout: float = 15.0) -> dict[str, Any] | None:
    """Stop ``key``'s server and wait until it is gone; its status, or None if none ran.

    A server that does not answer (paused, hung) gets SIGTERM and SIGCONT: a stopped
    process acts on the signal once it runs again.
    """
    status = server_status(key)
    if status is None or status["state"] == "stale":
        return None
    path = socket_path(key)
    connection = ServerClient(path, timeout=HANDSHAKE_TIMEOUT_S)
    try:
        connection.request({"op": "stop"})
    except ServerError:
        pid = status.get("pid")
        if not pid or not lock_path(key).exists():
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)
    finally:
        connection.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not path.exists() and _holder(key)[0] is not True:
            break
        time.sleep(0.05)
    return status


def wait_removed(path: Path, timeout: float = 10.0) -> None:
    """Until a stopped server has removed its socket (it finishes its current poll first)."""
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def start_detached(
    cli_args: list[str], key: str, lock: ServerLock, env: dict[str, str] | None = None
) -> tuple[int, Path]:
    """Run ``modernbert-cli CLI_ARGS`` in a new session, holding ``lock``; wait until it answers.

    The server inherits the lock (so no second one can start meanwhile) and writes to
    ``KEY.log``; the previous log is kept as ``KEY.log.1``. ``env``: extra variables
    (an API key travels here, not on the command line where `ps` shows it). Returns the
    pid and the log's path; raises ServerError when it exits or stays silent.
    """
    import subprocess
    import sys

    assert lock.fd is not None
    path, log = socket_path(key), log_path(key)
    with contextlib.suppress(FileNotFoundError):
        os.replace(log, log.with_name(log.name + ".1"))
    with open(log, "wb") as out:
        os.chmod(log, 0o600)
        child = subprocess.Popen(
            [sys.executable, "-m", "modernbert_cli", *cli_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            pass_fds=(lock.fd,),
            env={**os.environ, **(env or {}), LOCK_FD_ENV: str(lock.fd)},
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if is_alive(path, key):
            return child.pid, log
        if child.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ServerError(f"the server exited at start: {tail[0]}")
        time.sleep(0.2)
    child.terminate()
    raise ServerError(f"the server did not answer within {START_TIMEOUT_S:.0f} s; see {log}")
