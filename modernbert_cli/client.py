"""Talking to a warm ``modernbert-cli serve``: where its socket is, and the wire format.

A server is found by a *key* made of the model and the settings that change its
vectors, so a command only ever uses a server that would give it the very numbers
it would compute itself. This module imports neither torch nor
sentence-transformers: the client side of a command stays light.

The protocol, over a Unix domain socket: each message is a 4-byte big-endian
length and that many bytes of UTF-8 JSON. A reply carries ``"ok": true`` or an
``"error"``; vectors travel as base64 of little-endian float32, so they arrive
bit for bit as the server computed them.

>>> client = ServerClient(socket_path(server_key("minilm", {})))  # doctest: +SKIP
>>> client.info()["model"]  # doctest: +SKIP
'minilm'
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any

# Requests larger than this are refused by the server (and never sent by clients).
MAX_MESSAGE_BYTES = 256 << 20
CONNECT_TIMEOUT_S = 2.0
# A request may wait for other clients' work and a cold torch.compile: be patient.
REPLY_TIMEOUT_S = 600.0
# A server that accepts but does not answer `info` within this is as good as dead.
ALIVE_TIMEOUT_S = 5.0
# How long `serve --detach` waits for the new server to answer (a cold start imports
# torch and loads the weights).
START_TIMEOUT_S = 300.0


class ServerError(Exception):
    """The server could not be reached, or failed mid-request: work in-process instead."""


class UnknownOp(ServerError):
    """The server is of an older version that lacks this request: ask it the old way."""


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


def server_key(model: str, settings: dict[str, Any]) -> str:
    """Which server can serve a command: the same model name and vector-changing settings."""
    payload = json.dumps({"model": model, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def socket_path(key: str) -> Path:
    return runtime_dir() / f"{key}.sock"


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


class ServerClient:
    """One command's connection to a server, made on first use."""

    def __init__(
        self, path: Path, key: str | None = None, timeout: float = REPLY_TIMEOUT_S
    ) -> None:
        self.path = path
        self.key = key
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
                    # Nobody listens: the socket of a server that died. Remove it, so
                    # the next command does not stop to try it again.
                    self.path.unlink(missing_ok=True)
                raise ServerError(f"no server on {self.path} ({error.strerror or error})") from None
            sock.settimeout(self.timeout)
            self._sock = sock
            if self.key is not None:
                info = self.request({"op": "info"})
                if info.get("key") != self.key:
                    self.close()
                    raise ServerError(f"the server on {self.path} runs another model or settings")
        return self._sock

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        sock = self._connection()
        try:
            send(sock, message)
            reply = receive(sock)
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

    def info(self) -> dict[str, Any]:
        return self.request({"op": "info"})

    def embed(self, texts: list[str], prompt: str | None, task: str | None) -> tuple[Any, Any]:
        """Raw float32 vectors and truncation flags, as the server's model computes them."""
        import numpy as np

        reply = self.request({"op": "embed", "texts": texts, "prompt": prompt, "task": task})
        vectors = unpack_vectors(reply)
        truncated = np.asarray(reply["truncated"], dtype=bool)
        if len(vectors) != len(texts) or len(truncated) != len(texts):
            raise ServerError("the server answered for a different number of texts")
        return vectors, truncated

    def similar(
        self,
        queries: list[str],
        corpus: list[str],
        *,
        top_k: int | None,
        threshold: float | None,
        metric: str,
        cache: tuple[str, int] | None,
    ) -> dict[str, Any]:
        """The corpus ranked for each query by the server, which also asks the cache.

        ``cache``: the cache file and bound this command would use, or None. The reply
        has ``hits`` (per query, ``[index, score]`` best first), ``truncated`` (how many
        texts were cut at the token limit) and ``warnings`` (about the cache).
        """
        reply = self.request(
            {
                "op": "similar",
                "queries": queries,
                "corpus": corpus,
                "top_k": top_k,
                "threshold": threshold,
                "metric": metric,
                "cache": None if cache is None else {"path": cache[0], "max_bytes": cache[1]},
            }
        )
        hits = reply.get("hits")
        if not isinstance(hits, list) or len(hits) != len(queries):
            raise ServerError("the server answered for a different number of queries")
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- managing servers (for `serve --detach`, `--status`, `--stop`) ---------------------


def is_alive(path: Path, key: str | None = None) -> bool:
    """Whether a server answers on ``path`` (for ``key``, when given)."""
    if not path.exists():
        return False
    connection = ServerClient(path, key, timeout=ALIVE_TIMEOUT_S)
    try:
        connection.info()
        return True
    except ServerError:
        return False
    finally:
        connection.close()


def running_servers() -> tuple[list[dict[str, Any]], list[Path]]:
    """The ``info`` of every server of this user that answers, and the stale sockets removed."""
    found, stale = [], []
    for path in sorted(runtime_dir().glob("*.sock")):
        connection = ServerClient(path, timeout=ALIVE_TIMEOUT_S)
        try:
            found.append({**connection.info(), "socket": str(path)})
        except ServerError:
            path.unlink(missing_ok=True)
            stale.append(path)
        finally:
            connection.close()
    return found, stale


def wait_removed(path: Path, timeout: float = 10.0) -> None:
    """Until a stopped server has removed its socket (it finishes its current poll first)."""
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def start_detached(cli_args: list[str], path: Path, key: str) -> tuple[int, Path]:
    """Run ``modernbert-cli CLI_ARGS`` in a new session, output to a log; wait until it answers.

    Returns the pid and the log's path; raises ServerError when it exits or stays silent.
    """
    import subprocess
    import sys

    log = path.with_suffix(".log")
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "modernbert_cli", *cli_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
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
