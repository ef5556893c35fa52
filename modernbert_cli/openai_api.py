"""The OpenAI embeddings API over HTTP, for ``modernbert-cli serve --http HOST:PORT``.

``POST /v1/embeddings`` and ``GET /v1/models[/ID]`` as the official SDKs call them:
base64 answers (the SDK's default), ``dimensions`` (truncated, then re-normalised, as
OpenAI does), model names checked, usage counted in the model's tokens, and every
error in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``. With an
API key, requests must carry ``Authorization: Bearer KEY``.

>>> from openai import OpenAI  # doctest: +SKIP
>>> OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="KEY").embeddings.create(
...     model="minilm", input=["a cat"]).data[0].embedding[:2]  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hmac
import ipaddress
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from modernbert_cli.errors import UsageError
from modernbert_cli.server import (
    Backend,
    ClientGone,
    Embedded,
    TooLarge,
    _QuietErrors,
    log,
    peer_gone,
)

if TYPE_CHECKING:
    import numpy as np

API_KEY_ENV = "MODERNBERT_CLI_API_KEY"
# A refused body is read and dropped up to this size, so that the client, still
# sending, gets the 413 rather than a broken connection; beyond it the connection closes.
_DRAIN_BYTES = 256 << 20
_FIELDS = ("input", "model", "encoding_format", "dimensions", "user")


# --- HTTP: the address -----------------------------------------------------------------------


def parse_http_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (127.0.0.1) or ``[IPV6]:PORT``, as a host and a port."""
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if (
        not port.isascii()
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or (":" in host and not bracketed)
    ):
        raise UsageError(f"--http {value}: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    return host or "127.0.0.1", int(port)


def http_url(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_http(address: tuple[str, int]) -> socket.socket:
    """A socket listening on ``address``, or a one-line UsageError (before any model load)."""
    host, port = address
    shown = http_url(address).removeprefix("http://")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError):
        raise UsageError(f"--http {shown}: no such host or address: {host}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        sock.bind(where)
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            reason = f"port {port} is in use; choose another port or stop what listens on it"
        elif error.errno == errno.EADDRNOTAVAIL:
            reason = f"{host} is not an address of this machine"
        elif error.errno == errno.EACCES:
            reason = f"no permission to listen on port {port} (ports below 1024 need root)"
        else:
            reason = error.strerror or str(error)
        raise UsageError(f"--http {shown}: cannot listen: {reason}") from None
    return sock


def exposure_warning(address: tuple[str, int], api_key: str | None) -> str | None:
    """A warning when ``address`` is reachable from other machines and no key guards it."""
    if api_key:
        return None
    host = address[0]
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host or None, address[1])}
    except OSError:
        found = {host}
    loopback = True
    for ip in found:
        try:
            loopback &= ipaddress.ip_address(ip.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
    if loopback:
        return None
    return (
        f"--http {http_url(address).removeprefix('http://')} is reachable from other "
        "machines and has no API key: "
        f"anyone who can reach it can use it (set --api-key or {API_KEY_ENV})"
    )


# --- HTTP: the OpenAI embeddings API ------------------------------------------------------------


class ApiError(Exception):
    """An error reply in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def _model_not_found(name: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{name}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


@dataclass(frozen=True)
class EmbeddingsRequest:
    texts: list[str]
    base64: bool
    dimensions: int | None


def parse_embeddings_request(body: Any, backend: Backend) -> EmbeddingsRequest:
    """Check a ``POST /v1/embeddings`` body as OpenAI does; raise ApiError when it is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for name in body:
        if name not in _FIELDS:
            raise ApiError(400, f"Unrecognized request argument supplied: {name}", name)
    model = body.get("model")
    if model is not None:  # absent: the served model (curl users may leave it out)
        if not isinstance(model, str):
            raise ApiError(400, "'model' must be a string.", "model")
        if model not in backend.names:
            raise _model_not_found(model)
    if "input" not in body:
        raise ApiError(400, "Missing required parameter: 'input'.", "input")
    texts = body["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise ApiError(400, "'input' must be a string or a non-empty array of strings.", "input")
    if all(_is_token_ids(item) for item in texts):
        raise ApiError(
            400,
            "Token-id input is not supported: this server's model has its own tokenizer, "
            "so send the text itself (in LangChain: check_embedding_ctx_length=False).",
            "input",
            "unsupported_input",
        )
    if not all(isinstance(item, str) for item in texts):
        raise ApiError(400, "'input' must be a string or an array of strings.", "input")
    try:
        backend.check_texts(texts, "input")
    except TooLarge as error:
        raise ApiError(413, f"Request too large: {error}.", "input", "request_too_large") from None
    except ValueError as error:
        raise ApiError(400, f"{error}.", "input") from None
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        most = backend.dimensions
        if (
            isinstance(dimensions, bool)
            or not isinstance(dimensions, int)
            or not (1 <= dimensions <= most)
        ):
            raise ApiError(
                400,
                f"'dimensions' must be an integer from 1 to {most}: this model makes "
                f"{most}-dimensional embeddings.",
                "dimensions",
            )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, "'user' must be a string.", "user")
    return EmbeddingsRequest(texts, encoding == "base64", dimensions)


def _is_token_ids(item: Any) -> bool:
    if isinstance(item, int) and not isinstance(item, bool):
        return True
    return isinstance(item, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in item
    )


def embeddings_response(request: EmbeddingsRequest, done: Embedded, model: str) -> dict[str, Any]:
    """The answer as OpenAI gives it: ``dimensions`` truncate and re-normalise."""
    import numpy as np

    vectors = done.vectors
    if request.dimensions is not None:
        vectors = vectors[:, : request.dimensions]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    vectors = np.ascontiguousarray(vectors, dtype="<f4")

    def encoded(vector: np.ndarray) -> Any:
        if request.base64:
            return base64.b64encode(vector.tobytes()).decode()
        return vector.tolist()

    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": encoded(v)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": done.tokens, "total_tokens": done.tokens},
    }


_ROUTES = {"/v1/embeddings": ("POST",), "/v1/models": ("GET",)}


def make_server(backend: Backend, listener: socket.socket, api_key: str | None) -> Any:
    """The OpenAI embeddings API over HTTP/1.1 on an already listening socket."""
    secret = api_key.encode() if api_key else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
        timeout = 120  # a client that stops sending mid-request is dropped

        def version_string(self) -> str:
            return "modernbert-cli"

        def log_message(self, *args: Any) -> None:  # no access log on stderr
            pass

        def _reply(self, status: int, body: dict[str, Any], headers: Iterable = ()) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _fail(self, error: ApiError, headers: Iterable = ()) -> None:
            self._reply(error.status, error.body(), headers)

        def send_error(self, code: int, message: str | None = None, explain: Any = None) -> None:
            """http.server's own errors (bad request line, headers too long) as JSON too."""
            self.close_connection = True
            if code == 501:  # a method with no handler at all
                self._not_allowed()
                return
            self._fail(ApiError(code, message or self.responses.get(code, ("error",))[0]))

        def _route(self) -> str:
            return urlsplit(self.path).path.rstrip("/") or "/"

        def _allowed(self) -> tuple[str, ...] | None:
            route = self._route()
            if route in _ROUTES:
                return _ROUTES[route]
            if route.startswith("/v1/models/"):
                return ("GET",)
            return None

        def _not_allowed(self) -> None:
            allowed = self._allowed()
            if allowed is None:
                self._fail(ApiError(404, f"Unknown request URL: {self.command} {self._route()}."))
                return
            self._fail(
                ApiError(
                    405,
                    f"Method {self.command} is not allowed on {self._route()}; "
                    f"use {', '.join(allowed)}.",
                    code="method_not_allowed",
                ),
                [("Allow", ", ".join(allowed))],
            )

        def _authorised(self) -> bool:
            if secret is None:
                return True
            given = self.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), secret):
                return True
            message = (
                "Incorrect API key provided."
                if given
                else "You didn't provide an API key: send it as 'Authorization: Bearer KEY'."
            )
            self._fail(
                ApiError(401, message, code="invalid_api_key"),
                [("WWW-Authenticate", "Bearer")],
            )
            return False

        def _start(self, method: str) -> bool:
            """Route and authorise; False when an error reply was sent instead."""
            allowed = self._allowed()
            if allowed is None or method not in allowed:
                self._drain(self._declared_length() or 0)
                self._not_allowed()
                return False
            return self._authorised()

        def do_GET(self) -> None:
            if not self._start("GET"):
                return
            route = self._route()
            if route == "/v1/models":
                self._reply(200, {"object": "list", "data": [self._model()]})
                return
            name = unquote(route.removeprefix("/v1/models/"))
            if name not in backend.names:
                self._fail(_model_not_found(name))
                return
            self._reply(200, self._model())

        def _model(self) -> dict[str, Any]:
            return {
                "id": backend.encoder.name,
                "object": "model",
                "created": int(backend.started),
                "owned_by": "modernbert-cli",
            }

        def do_POST(self) -> None:
            if not self._start("POST"):
                return
            try:
                body = self._body()
                request = parse_embeddings_request(body, backend)
            except ApiError as error:
                self._fail(error)
                return
            backend.touch()
            try:
                done = backend.embed(request.texts, gone=lambda: peer_gone(self.connection))
            except ClientGone:
                self.close_connection = True
                return
            except TooLarge as error:
                self._fail(ApiError(413, f"Request too large: {error}.", "input"))
                return
            except Exception as error:
                log(f"an HTTP request failed: {type(error).__name__}: {error}")
                self._fail(
                    ApiError(500, "The server failed to embed the input.", kind="server_error")
                )
                return
            self._reply(200, embeddings_response(request, done, backend.encoder.name))

        def _declared_length(self) -> int | None:
            declared = self.headers.get("Content-Length")
            if declared is None:
                return None
            declared = declared.strip()
            return int(declared) if declared.isascii() and declared.isdigit() else -1

        def _body(self) -> Any:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True
                raise ApiError(411, "Send the body with a Content-Length (no chunked encoding).")
            length = self._declared_length()
            if length is None or length < 0:
                self.close_connection = True
                raise ApiError(400, "A valid Content-Length header is required.")
            if length > backend.limits.max_body_bytes:
                self._drain(length)
                raise ApiError(
                    413,
                    f"Request too large: the body has {length:,} bytes; this server takes "
                    f"at most {backend.limits.max_body_bytes:,}.",
                    code="request_too_large",
                )
            data = self.rfile.read(length)
            if len(data) < length:
                self.close_connection = True
                raise ApiError(400, "The request body ended early.")
            try:
                return json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(
                    400, "We could not parse the JSON body of your request: send valid JSON."
                ) from None

        def _drain(self, length: int) -> None:
            """Read and drop a body we will not use, so the client can read our reply."""
            if length <= 0:
                return
            if length > _DRAIN_BYTES:
                self.close_connection = True
                return
            with contextlib.suppress(OSError):
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 20))
                    if not chunk:
                        break
                    length -= len(chunk)
            self.close_connection = self.close_connection or length > 0

        def do_PUT(self) -> None:
            self._start("PUT")

        do_DELETE = do_PATCH = do_PUT

        def do_HEAD(self) -> None:
            self._start("HEAD")

        def do_OPTIONS(self) -> None:
            self._start("OPTIONS")

    class Server(_QuietErrors, ThreadingHTTPServer):
        daemon_threads = True
        address_family = listener.family

    web = Server(listener.getsockname()[:2], Handler, bind_and_activate=False)
    web.socket.close()
    web.socket = listener
    web.server_address = listener.getsockname()
    return web
