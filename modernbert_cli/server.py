"""``modernbert-cli serve``: a warm model behind a Unix socket (and, on request, HTTP).

One process loads the model once and answers embedding requests from every
command that runs with the same model and settings, so a one-off query pays
for a socket round trip instead of importing torch and loading weights.

- The socket lives in the user's runtime folder (mode 0700) and is itself 0600.
- Requests are served concurrently; the model runs one batch at a time (a lock).
- A malformed, oversized or failing request gets an error reply; the server goes on.
- After ``idle_timeout`` seconds without a request the server exits and removes its socket.
- ``--http HOST:PORT`` adds an OpenAI-compatible ``POST /v1/embeddings``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from modernbert_cli.client import MAX_MESSAGE_BYTES, pack_vectors, receive, send


class Backend:
    """The model side of the server: an Encoder (it runs one batch at a time)."""

    def __init__(self, encoder: Any, key: str, idle_timeout: float) -> None:
        self.encoder = encoder
        self.key = key
        self.idle_timeout = idle_timeout
        self.started = time.time()
        self.last_request = time.monotonic()
        self.requests = 0

    def info(self) -> dict[str, Any]:
        return {
            "ok": True,
            "key": self.key,
            "model": self.encoder.name,
            "pid": os.getpid(),
            "started": self.started,
            "requests": self.requests,
            "idle_timeout": self.idle_timeout,
        }

    def embed(self, texts: Any, prompt: Any, task: Any) -> tuple[Any, Any]:
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("'texts' must be a list of strings")
        if not texts:
            raise ValueError("'texts' is empty: give at least one text")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError("'prompt' must be a string or null")
        if task not in (None, "query", "document"):
            raise ValueError("'task' must be null, 'query' or 'document'")
        return self.encoder.compute_prompted(texts, prompt or "", task)

    def similar(self, message: dict[str, Any]) -> dict[str, Any]:
        """A client's whole ``similar``: its cache asked here, the corpus ranked here.

        The ranking is :func:`~modernbert_cli.embedder.rank`, as the client would run
        it, on the vectors its cache or this model gives: the same hits and scores.
        """
        from modernbert_cli.cache import EmbeddingCache
        from modernbert_cli.embedder import rank
        from modernbert_cli.encoder import EncodeOptions

        queries, corpus = message.get("queries"), message.get("corpus")
        for name, texts in (("queries", queries), ("corpus", corpus)):
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"'{name}' must be a list of strings")
        if not queries:
            raise ValueError("'queries' is empty: give at least one query")
        top_k, threshold = message.get("top_k"), message.get("threshold")
        if top_k is not None and (type(top_k) is not int or top_k < 1):
            raise ValueError("'top_k' must be null or a whole number from 1")
        if threshold is not None and type(threshold) not in (int, float):
            raise ValueError("'threshold' must be null or a number")
        where = message.get("cache")
        warnings: list[str] = []
        cache = None
        if where is not None:
            path, bound = where.get("path"), where.get("max_bytes")
            if not isinstance(path, str) or type(bound) is not int:
                raise ValueError("'cache' must be null or {path: string, max_bytes: integer}")
            cache = EmbeddingCache(Path(path), bound, warn=warnings.append)
        encoder = self.encoder.sharing(cache)
        try:
            hits = rank(
                lambda texts, role: encoder.encode(texts, EncodeOptions(), role=role),
                queries,
                corpus,
                top_k=top_k,
                threshold=threshold,
                metric=str(message.get("metric")),
            )
        finally:
            encoder.close()  # records the cache's hits and misses, as the client would
        return {
            "hits": [[[hit.index, hit.score] for hit in row] for row in hits],
            "truncated": encoder.truncated,
            "warnings": warnings,
        }

    def touch(self) -> None:
        self.last_request = time.monotonic()
        self.requests += 1


def handle(backend: Backend, message: dict[str, Any], stop: Callable[[], None]) -> dict[str, Any]:
    """One request to one reply; every failure is an error reply, never a crash."""
    backend.touch()
    op = message.get("op")
    try:
        if op == "info":
            return backend.info()
        if op == "embed":
            vectors, truncated = backend.embed(
                message.get("texts"), message.get("prompt"), message.get("task")
            )
            return {"ok": True, **pack_vectors(vectors), "truncated": truncated.tolist()}
        if op == "similar":
            return {"ok": True, **backend.similar(message)}
        if op == "stop":
            stop()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}
    except Exception as error:  # a bad request must not take the server down
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # A full backlog refuses a Unix-socket connect at once (EAGAIN), and that client
    # would load the model itself: leave room for many commands starting together.
    request_queue_size = 128


def serve(
    backend: Backend,
    path: Path,
    http: tuple[str, int] | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until stopped, idle too long, or interrupted; the socket is removed after."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            while True:
                try:
                    message = receive(sock, MAX_MESSAGE_BYTES)
                except (ValueError, json.JSONDecodeError) as error:
                    with contextlib.suppress(OSError):
                        send(sock, {"ok": False, "error": f"bad request: {error}"})
                    return  # the stream may be out of step: drop the connection
                except OSError:
                    return
                if message is None:
                    return
                reply = handle(backend, message, stop)
                try:
                    send(sock, reply)
                except OSError:
                    return

    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a dead server
    old_mask = os.umask(0o177)  # the socket is created 0600
    try:
        server = _UnixServer(str(path), Handler)
    finally:
        os.umask(old_mask)
    made = path.stat()

    def remove_socket() -> None:
        """Remove this server's socket, never one a newer server has put in its place."""
        with contextlib.suppress(OSError):
            now = path.stat()
            if (now.st_ino, now.st_ctime_ns) == (made.st_ino, made.st_ctime_ns):
                path.unlink()

    try:
        web = _http_server(backend, http, lambda: stop()) if http else None
    except BaseException:  # e.g. the port is taken: leave no socket behind
        server.server_close()
        remove_socket()
        raise
    stopping = threading.Event()

    def stop() -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()
            if web is not None:
                threading.Thread(target=web.shutdown, daemon=True).start()

    def watch_idle() -> None:
        while not stopping.wait(1.0):
            if time.monotonic() - backend.last_request > backend.idle_timeout:
                stop()

    threading.Thread(target=watch_idle, daemon=True, name="idle-timeout").start()
    # `kill PID` stops the server as --stop does, so its socket is removed.
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop())
    if web is not None:
        threading.Thread(target=web.serve_forever, daemon=True, name="http").start()
    if ready is not None:
        where = str(path) + (f" and http://{http[0]}:{http[1]}/v1/embeddings" if http else "")
        ready(where)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        server.server_close()
        if web is not None:
            web.server_close()
        remove_socket()


def _http_server(backend: Backend, address: tuple[str, int], stop: Callable[[], None]) -> Any:
    """OpenAI-compatible embeddings: ``POST /v1/embeddings {"input": ..., "model": ...}``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # no access log on stderr
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._reply(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                model = {"id": backend.encoder.name, "object": "model", "owned_by": "local"}
                self._reply(200, {"object": "list", "data": [model]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/embeddings":
                self._error(404, f"no route {self.path}")
                return
            declared = self.headers.get("Content-Length") or "0"
            if not (declared.isascii() and declared.isdigit()):
                self._error(400, f"bad request: Content-Length {declared!r}")
                return
            length = int(declared)
            if length > MAX_MESSAGE_BYTES:
                self._error(413, "request too large")
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
                texts = body["input"] if isinstance(body, dict) else None
                if isinstance(texts, str):
                    texts = [texts]
                backend.touch()
                vectors, _ = backend.embed(texts, None, None)
            except (KeyError, TypeError, ValueError) as error:
                self._error(400, f"bad request: {error}")
                return
            except Exception as error:
                self._error(500, f"{type(error).__name__}: {error}")
                return
            tokens = sum(len(t.split()) for t in texts)
            self._reply(
                200,
                {
                    "object": "list",
                    "model": backend.encoder.name,
                    "data": [
                        {"object": "embedding", "index": i, "embedding": v.tolist()}
                        for i, v in enumerate(vectors)
                    ],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )

    return ThreadingHTTPServer(address, Handler)
