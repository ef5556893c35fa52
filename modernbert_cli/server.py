"""``modernbert-cli serve``: a warm model behind a Unix socket (and, on request, HTTP).

One process loads the model once and answers embedding requests from every
command that runs with the same model, settings and model files, so a one-off
query pays for a socket round trip instead of importing torch and loading weights.

- The socket lives in the user's runtime folder (mode 0700) and is itself 0600.
- Requests are bounded (texts per request, characters per text, bytes per body) and
  cut into engine-sized jobs; one worker runs the model, taking one job of each
  waiting request in turn, so a large request cannot starve a small one. The work
  of a client that has gone is dropped at the next job.
- A malformed, oversized or failing request gets an error reply; the server goes on.
  A client that hangs up early leaves no trace in the log.
- After ``idle_timeout`` seconds without a request (and no work left) the server exits
  and removes its socket.
- ``--http HOST:PORT`` adds the OpenAI embeddings API (:mod:`modernbert_cli.openai_api`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modernbert_cli.client import (
    MAX_INPUT_CHARS,
    MAX_INPUTS,
    MAX_MESSAGE_BYTES,
    ServerLock,
    pack_vectors,
    receive,
    send,
)

if TYPE_CHECKING:
    import numpy as np

    from modernbert_cli.cache import KeptBlocks
    from modernbert_cli.embedder import Embedder
    from modernbert_cli.split_cache import Snapshots, StatMemo

# An HTTP body over this is refused (413) unread; MAX_INPUTS texts of a few pages fit.
MAX_HTTP_BODY_BYTES = 32 << 20
# A model the engine cannot run goes through sentence-transformers' encode: texts per job.
_ENCODE_JOB_TEXTS = 32
# Kept blocks (a file's passage vectors) a server holds in memory for repeat searches:
# minilm's vectors of the passages of about 60 MB of text.
KEPT_BLOCK_BYTES = 256 << 20
# A search with more passages than this for the model to embed is handed back to its
# client, which shows its progress (and embeds through the server): a few files edited
# since the last search are searched here.
SEARCH_NEW_TEXTS = 256
# A walk remembered (split_cache.Snapshots) is walked again after at most this long.
_SNAPSHOT_S = 3600
# The server's own log lines (failed requests) per run; a log must not grow without end.
_LOG_LINES = 200


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_inputs: int = MAX_INPUTS
    max_input_chars: int = MAX_INPUT_CHARS
    max_body_bytes: int = MAX_HTTP_BODY_BYTES


class TooLarge(ValueError):
    """A request over one of the :class:`Limits` (HTTP 413)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ClientGone(Exception):
    """The client closed its connection: the rest of its work was dropped."""


@dataclass
class Embedded:
    """One request's answer: float32 vectors, which texts were cut, tokens the model read."""

    vectors: np.ndarray
    truncated: np.ndarray
    tokens: int


_log_lines = itertools.count()


def log(message: str) -> None:
    """One line in the server's log (its stderr), up to ``_LOG_LINES`` per run."""
    number = next(_log_lines)
    if number < _LOG_LINES:
        print(f"modernbert-cli serve: {message}", file=sys.stderr, flush=True)
    elif number == _LOG_LINES:
        print("modernbert-cli serve: further messages are not logged", file=sys.stderr, flush=True)


# --- the model, shared fairly ----------------------------------------------------------------


class _Job:
    def __init__(self, steps: Generator[None, None, Any], gone: Callable[[], bool]) -> None:
        self.steps = steps
        self.gone = gone
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class FairQueue:
    """One worker runs every request's work, one engine-sized job of each request in turn.

    The model runs one batch at a time either way; taking turns means a request of a
    few texts waits for one batch of each other request, not for all of their work.
    A request's work is a generator that yields after each job; before each job the
    worker asks ``gone()`` and drops the work of a client that has hung up.
    """

    def __init__(self) -> None:
        self._ready: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self.active = 0  # requests with work queued or running

    def run(self, steps: Generator[None, None, Any], gone: Callable[[], bool]) -> Any:
        """Queue ``steps``, wait until they are done, and return their result."""
        job = _Job(steps, gone)
        with self._cond:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, daemon=True, name="model")
                self._worker.start()
            self._ready.append(job)
            self.active += 1
            self._cond.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._ready:
                    self._cond.wait()
                job = self._ready.popleft()
            try:
                if job.gone():
                    job.steps.close()
                    raise ClientGone()
                next(job.steps)
            except StopIteration as finished:
                job.result = finished.value
            except BaseException as error:  # the request's failure, not the worker's
                job.error = error
            else:
                with self._cond:
                    self._ready.append(job)  # to the back: the others go first
                continue
            with self._cond:
                self.active -= 1
            job.done.set()


class Backend:
    """The model side of the server: an Encoder, its names, limits and fair queue."""

    def __init__(
        self,
        encoder: Any,
        key: str,
        idle_timeout: float,
        *,
        fingerprint: str | None = None,
        started_as: str | None = None,
        limits: Limits = Limits(),
    ) -> None:
        self.encoder = encoder
        self.key = key
        self.fingerprint = fingerprint
        self.idle_timeout = idle_timeout
        self.limits = limits
        self.names = model_names(encoder.name, started_as)
        self.http: str | None = None
        self.started = time.time()
        self.last_request = time.monotonic()
        self.requests = 0
        self.queue = FairQueue()
        self.kept_blocks: KeptBlocks | None = None  # made by the first search
        self.memo: StatMemo | None = None  # likewise: files' verdicts and split entries
        self.snapshots: Snapshots | None = None  # and whole walks, under their paths' stats
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self.queue.active > 0

    def info(self) -> dict[str, Any]:
        return {
            "ok": True,
            "key": self.key,
            "model": self.encoder.name,
            "fingerprint": self.fingerprint,
            "pid": os.getpid(),
            "started": self.started,
            "requests": self.requests,
            "idle_timeout": self.idle_timeout,
            "http": self.http,
        }

    def check(self, texts: Any, prompt: Any, task: Any) -> None:
        """Refuse a request of the socket protocol that is malformed or over a limit."""
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("'texts' must be a list of strings")
        if not texts:
            raise ValueError("'texts' is empty: give at least one text")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError("'prompt' must be a string or null")
        if task not in (None, "query", "document"):
            raise ValueError("'task' must be null, 'query' or 'document'")
        self.check_texts(texts, "texts")

    def check_texts(self, texts: list[str], param: str) -> None:
        """Refuse texts over the limits (TooLarge) or not valid Unicode (ValueError)."""
        limits = self.limits
        if len(texts) > limits.max_inputs:
            raise TooLarge(
                f"{len(texts):,} inputs in one request; this server takes at most "
                f"{limits.max_inputs:,}: send them in several requests",
                param,
            )
        for index, text in enumerate(texts):
            if len(text) > limits.max_input_chars:
                raise TooLarge(
                    f"input {index} has {len(text):,} characters; this server takes at most "
                    f"{limits.max_input_chars:,} per input",
                    param,
                )
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as error:  # a lone surrogate, e.g. from "\ud800"
                    raise ValueError(
                        f"input {index} is not valid Unicode text: it holds a lone surrogate "
                        f"(U+{ord(text[error.start]):04X})"
                    ) from None

    def embed(
        self,
        texts: list[str],
        prompt: str | None = None,
        task: str | None = None,
        gone: Callable[[], bool] = lambda: False,
    ) -> Embedded:
        """Vectors for ``texts``, computed in turn with other requests' (see FairQueue)."""
        self.check(texts, prompt, task)
        return self.queue.run(self._steps(texts, prompt or "", task), gone)

    @property
    def dimensions(self) -> int:
        """Length of the model's vectors."""
        model = self.encoder.model
        get = getattr(model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        return int(get() if get else model.get_sentence_embedding_dimension())

    def _steps(
        self, texts: list[str], prompt: str, task: str | None
    ) -> Generator[None, None, Embedded]:
        """The work of one request, a yield after each engine-sized job."""
        import numpy as np

        from modernbert_cli.engine import TokenCounts

        engine = self.encoder.engine
        if engine is None:
            return (yield from self._steps_without_engine(texts, prompt, task))
        counts = engine.token_counts(texts, prompt)
        yield
        out = None
        # The engine's own plan: the same batches as one call for all of them would run.
        for batch in engine.plan(counts.tokens):
            part = TokenCounts(counts.tokens[batch.indices], counts.needed[batch.indices])
            vectors = engine.encode(
                [texts[i] for i in batch.indices],
                prompt=prompt or None,
                task=task,
                counts=part,
            )
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[batch.indices] = vectors
            yield
        limit = engine.max_seq_length
        tokens = int(np.minimum(counts.tokens, limit).sum())
        return Embedded(out, counts.tokens > limit, tokens)

    def _steps_without_engine(
        self, texts: list[str], prompt: str, task: str | None
    ) -> Generator[None, None, Embedded]:
        import numpy as np

        from modernbert_cli.engine import token_counts

        vectors, truncated = [], []
        for start in range(0, len(texts), _ENCODE_JOB_TEXTS):
            part = texts[start : start + _ENCODE_JOB_TEXTS]
            got, cut = self.encoder.compute_prompted(part, prompt, task)
            vectors.append(got)
            truncated.append(cut)
            yield
        model = self.encoder.model
        limit = int(getattr(model, "max_seq_length", 0) or 0)
        tokenizer = getattr(model, "tokenizer", None)
        tokens = 0
        if callable(tokenizer):
            counted = token_counts(tokenizer, texts, prompt, limit or None).tokens
            tokens = int((np.minimum(counted, limit) if limit else counted).sum())
        return Embedded(np.concatenate(vectors), np.concatenate(truncated), tokens)

    def similar(
        self, message: dict[str, Any], gone: Callable[[], bool] = lambda: False
    ) -> dict[str, Any]:
        """A client's whole ``similar``: its cache asked here, the corpus ranked here.

        The ranking is :func:`~modernbert_cli.embedder.rank`, as the client would run
        it, on the vectors its cache or this model gives: the same hits and scores. The
        model's share of the work waits its turn like any request's.
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
        self.check_texts(queries + corpus, "texts")
        top_k, threshold = message.get("top_k"), message.get("threshold")
        if top_k is not None and (type(top_k) is not int or top_k < 1):
            raise ValueError("'top_k' must be null or a whole number from 1")
        if threshold is not None and type(threshold) not in (int, float):
            raise ValueError("'threshold' must be null or a number")
        truncate_dim = message.get("truncate_dim")
        if truncate_dim is not None and (type(truncate_dim) is not int or truncate_dim < 1):
            raise ValueError("'truncate_dim' must be null or a whole number from 1")
        where = message.get("cache")
        warnings: list[str] = []
        cache = None
        if where is not None:
            path, bound = where.get("path"), where.get("max_bytes")
            if not isinstance(path, str) or type(bound) is not int:
                raise ValueError("'cache' must be null or {path: string, max_bytes: integer}")
            cache = EmbeddingCache(Path(path), bound, warn=warnings.append)
        options = EncodeOptions(truncate_dim=truncate_dim)
        encoder = self.encoder.sharing(cache, _Model(self, gone))
        try:
            hits = rank(
                lambda texts, role: encoder.encode(texts, options, role=role),
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
            # Per role, in the order embedded: [role, texts, truncated] (the client's note).
            "by_role": [[role, *counts] for role, counts in encoder.by_role.items()],
            "warnings": warnings,
        }

    def search(
        self, message: dict[str, Any], gone: Callable[[], bool] = lambda: False
    ) -> dict[str, Any]:
        """A client's whole ``similar --passages`` over files and folders: walked, split
        (through its split cache), embedded (through its cache) and ranked here.

        The code is the client's own (:meth:`~modernbert_cli.passages.Splitter.passages`,
        :func:`~modernbert_cli.embedder.rank`): the same hits, scores and notes. Names
        come as ``[absolute, as the client named it]``: walked as the first, passages and
        skips named after the second. An error the client's own run would report (a
        missing file, no passages), or more to embed than :data:`SEARCH_NEW_TEXTS`, comes
        back as ``redo``: the client works itself, reporting any error word for word.
        """
        from modernbert_cli.errors import CliError

        try:
            return self._search(message, gone)
        except (CliError, _HandOver) as error:
            return {"redo": str(error)}

    def _search(self, message: dict[str, Any], gone: Callable[[], bool]) -> dict[str, Any]:
        from modernbert_cli import split_cache
        from modernbert_cli.cache import EmbeddingCache, KeptBlocks
        from modernbert_cli.embedder import rank
        from modernbert_cli.encoder import EncodeOptions
        from modernbert_cli.passages import Splitter, check_names, file_of

        queries, names = message.get("queries"), message.get("names")
        if not isinstance(queries, list) or not all(isinstance(t, str) for t in queries):
            raise ValueError("'queries' must be a list of strings")
        if not isinstance(names, list) or not all(
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(n, str) for n in pair)
            and os.path.isabs(pair[0])
            for pair in names
        ):
            raise ValueError("'names' must be a list of [absolute path, path as named]")
        if not queries or not names:
            raise ValueError("'queries' and 'names' must each hold at least one")
        self.check_texts(queries, "queries")
        top_k, threshold = message.get("top_k"), message.get("threshold")
        if top_k is not None and (type(top_k) is not int or top_k < 1):
            raise ValueError("'top_k' must be null or a whole number from 1")
        if threshold is not None and type(threshold) not in (int, float):
            raise ValueError("'threshold' must be null or a number")
        numbers = {k: message.get(k) for k in ("passage_tokens", "overlap", "limit")}
        for k, value in numbers.items():
            if value is not None and type(value) is not int:
                raise ValueError(f"'{k}' must be null or a whole number")
        max_line_bytes, prompt = message.get("max_line_bytes"), message.get("prompt")
        directory = message.get("directory")
        if type(max_line_bytes) is not int or max_line_bytes < 1:
            raise ValueError("'max_line_bytes' must be a whole number from 1")
        if not isinstance(prompt, str) or not isinstance(directory, str):
            raise ValueError("'prompt' and 'directory' must be strings")
        # What the client would have printed, in order: ["warn", text] or ["skip", path,
        # reason, folder].
        events: list[list[Any]] = []

        def warn(text: str) -> None:
            events.append(["warn", text])

        caches = []
        for name in ("cache", "split_cache"):
            where = message.get(name)
            if where is not None and (
                not isinstance(where, dict)
                or not isinstance(where.get("path"), str)
                or type(where.get("max_bytes")) is not int
            ):
                raise ValueError(f"'{name}' must be null or {{path: string, max_bytes: integer}}")
            caches.append(where)
        cache = caches[0] and EmbeddingCache(
            Path(caches[0]["path"]), caches[0]["max_bytes"], warn=warn
        )
        with self._lock:
            if self.kept_blocks is None:
                self.kept_blocks = KeptBlocks(KEPT_BLOCK_BYTES)
                self.memo = split_cache.StatMemo()
                self.snapshots = split_cache.Snapshots()
        memo, snapshots = self.memo, self.snapshots
        assert snapshots is not None
        splits = caches[1] and split_cache.SplitCache(
            Path(caches[1]["path"]), caches[1]["max_bytes"], warn, memo
        )
        splitter = Splitter.for_files(
            Path(directory),
            numbers["limit"],
            numbers["passage_tokens"],
            numbers["overlap"],
            prompt,
            splits or None,
        )
        check_names([absolute for absolute, _ in names], max_line_bytes)
        # The client's paths are walked; passages and skips are named as it names them.
        walking = _Relabel(names)

        def skip(what: Any) -> None:
            events.append(["skip", walking.path(str(what.path)), what.reason, what.folder])

        # A walk is remembered under all that decides what it finds: the names, how files
        # are cut (the split key: tokenizer, sizes, prompt...) and the split cache asked.
        remembered = splits and (
            splitter.key(max_line_bytes),
            str(splits.path),
            tuple((absolute, named) for absolute, named in names),
        )
        steps = snapshots.get(remembered) if remembered else None
        walked = None
        if steps is not None:
            items: Iterator[Any] = walking.replay(steps, splitter, skip, max_line_bytes)
        else:
            walked = split_cache.Walked() if remembered else None
            raw = splitter.passages(
                walking.names(),
                skip if walked is None else walking.noting(skip, walked),
                None,
                max_line_bytes,
                kept_files=True,
                judge=memo.sniff if memo is not None else None,
                watch=walked and walked.watch,
            )
            items = map(walking.item, raw) if walked is None else walking.recorded(raw, walked)
        options = EncodeOptions()
        # More than a few files' worth to embed: the client's to do, with its progress.
        encoder = self.encoder.sharing(cache or None, _Model(self, gone, SEARCH_NEW_TEXTS))
        encoder.kept_blocks = self.kept_blocks
        try:
            first = next(items, None)
            if first is None:  # the client's own run says why, with the skips
                return {"redo": "no passages"}
            hits = rank(
                lambda texts, role, blocks=(): encoder.encode(
                    texts, options, role=role, blocks=blocks
                ),
                queries,
                itertools.chain([first], items),
                top_k=top_k,
                threshold=threshold,
                metric=str(message.get("metric")),
                distinct=file_of if message.get("per_document") else None,
                kept=lambda key: encoder.encode_kept(key, options, role="document"),
            )
        finally:
            splitter.close()
            encoder.close()  # records the cache's hits and misses, as the client would
        # A warning (the split cache unusable, an entry damaged) is said again by a walk,
        # not by a walk remembered: a search that gave one is not remembered.
        if walked is not None and walked.finished and not any(e[0] == "warn" for e in events):
            now = time.time()
            # Until its split entries are due for their hourly touch (a repeat walk asks
            # the split cache for those, writing their last use), but half an hour at least.
            until = min(max(splits.due, now + _SNAPSHOT_S / 2), now + _SNAPSHOT_S)
            snapshots.put(remembered, walked, until)
        return {
            "hits": [
                [
                    [hit.index, hit.score, hit.item.path, hit.item.start, hit.item.end, hit.text]
                    for hit in row
                ]
                for row in hits
            ],
            "by_role": [[role, *counts] for role, counts in encoder.by_role.items()],
            "events": events,
        }

    def touch(self) -> None:
        self.last_request = time.monotonic()
        self.requests += 1


class _HandOver(Exception):
    """A search with much to embed: the client does it, showing its progress."""


class _Relabel:
    """Paths under a client's names, walked as absolute paths, named as the client names
    them: ``[absolute, as named]`` pairs, in the order walked."""

    def __init__(self, names: list[list[str]]) -> None:
        from modernbert_cli.passages import KeptFile, Passage

        # Each name as pathlib writes it, as the walk's paths and the client's start.
        self.pairs = [(str(Path(absolute)), str(Path(named))) for absolute, named in names]
        self.at = 0  # the name being walked
        self._kept_file, self._passage = KeptFile, Passage  # imported once, not per file

    def names(self) -> Iterator[str]:
        for at, (absolute, _) in enumerate(self.pairs):
            self.at = at
            yield absolute

    def path(self, path: str, at: int | None = None) -> str:
        absolute, named = self.pairs[self.at if at is None else at]
        if path == absolute:
            return named
        head = absolute.rstrip("/") + "/"
        if not path.startswith(head):
            raise ValueError(f"{path} was found outside {absolute}")
        # As str(Path(named, rest)) writes it (rest is a walked path's tail), without
        # pathlib's parsing: a search relabels every passage of the files it reads.
        rest = path[len(head) :]
        return rest if named == "." else f"{named.rstrip('/')}/{rest}"

    def item(self, item: Any, at: int | None = None) -> Any:
        """A Passage or KeptFile (its passages too, when read) under its client name."""
        KeptFile, Passage = self._kept_file, self._passage
        at = self.at if at is None else at
        path = self.path(item.path, at)
        # Made directly, not by dataclasses.replace: a search relabels every file it walks.
        if isinstance(item, KeptFile):
            read = item.read
            return KeptFile(
                path,
                item.count,
                item.block_key,
                lambda: (Passage(path, p.start, p.end, p.text) for p in read()),
            )
        return Passage(path, item.start, item.end, item.text)

    def noting(self, skip: Callable[[Any], None], walked: Any) -> Callable[[Any], None]:
        """``skip``, each skip of the walk also noted in ``walked`` (a step to replay)."""
        from modernbert_cli.walk import UNREADABLE

        def noted(what: Any) -> None:
            skip(what)
            if walked.usable and not walked.finished:  # not a kept file's, read for a hit
                if what.reason.startswith(UNREADABLE):
                    walked.spoil()  # it may be readable next time, its stat unchanged
                else:
                    walked.add(("skip", what, self.at))

        return noted

    def recorded(self, raw: Iterator[Any], walked: Any) -> Iterator[Any]:
        """``raw`` under client names, each kept file noted in ``walked``; ``walked`` is
        spoilt by anything else (a passage: its text is not kept) or a walk not finished."""
        KeptFile = self._kept_file
        for item in raw:
            named = self.item(item)
            if not isinstance(item, KeptFile):
                walked.spoil()
            elif walked.usable:
                itself = item.path == self.pairs[self.at][0]  # a file named, not walked to
                walked.add(("file", item.path, named.path, item.count, item.block_key, itself))
            yield named
        walked.finished = True

    def replay(
        self,
        steps: tuple[Any, ...],
        splitter: Any,
        skip: Callable[[Any], None],
        max_line_bytes: int,
    ) -> Iterator[Any]:
        """What a walk remembered gave, under client names: its kept files, its skips said
        in turn; a file's passages read, when wanted, through ``splitter``."""
        KeptFile, Passage = self._kept_file, self._passage

        def read(walked: str, path: str, itself: bool) -> Callable[[], Iterator[Any]]:
            def passages() -> Iterator[Any]:
                found = splitter.file_passages(Path(walked), skip, max_line_bytes, named=itself)
                return (Passage(path, p.start, p.end, p.text) for p in found)

            return passages

        for step in steps:
            if step[0] == "file":
                _, walked, path, count, key, itself = step
                yield KeptFile(path, count, key, read(walked, path, itself))
            else:
                _, what, self.at = step
                skip(what)
        self.at = len(self.pairs) - 1  # as after a walk of every name


class _Model:
    """The fair queue as an Encoder sees a server: what its cache lacks goes through it.

    ``documents``: how many document texts it embeds before it hands the work back.
    """

    def __init__(
        self, backend: Backend, gone: Callable[[], bool], documents: int | None = None
    ) -> None:
        self.backend, self.gone, self.documents = backend, gone, documents

    def embed(self, texts: list[str], prompt: str | None, task: str | None) -> tuple[Any, Any]:
        if self.documents is not None and task == "document":
            self.documents -= len(texts)
            if self.documents < 0:
                raise _HandOver(f"{len(texts):,} passages to embed")
        done = self.backend.embed(texts, prompt, task, self.gone)
        return done.vectors, done.truncated

    def close(self) -> None:
        pass


def model_names(canonical: str, started_as: str | None = None) -> set[str]:
    """The names a client may ask for the served model by: its own, and its aliases."""
    from modernbert_cli.model import ALIASES, canonical_name

    names = {canonical} | ({started_as} if started_as else set())
    for alias, target in ALIASES.items():
        if canonical in (alias, target, canonical_name(alias)):
            names |= {alias, target}
    return names


def peer_gone(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (without reading what it may have sent)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return False
        elif not select.select([sock], [], [], 0)[0]:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError, TimeoutError):
        return False
    except (OSError, ValueError):
        return True


def handle(
    backend: Backend,
    message: dict[str, Any],
    stop: Callable[[], None],
    gone: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """One request to one reply; every failure is an error reply, never a crash.

    ``gone``: whether the client has hung up (its remaining work is then dropped).
    """
    backend.touch()
    op = message.get("op")
    try:
        if op == "info":
            return backend.info()
        if op == "embed":
            done = backend.embed(
                message.get("texts"),
                message.get("prompt"),
                message.get("task"),
                gone,
            )
            return {"ok": True, **pack_vectors(done.vectors), "truncated": done.truncated.tolist()}
        if op == "similar":
            return {"ok": True, **backend.similar(message, gone)}
        if op == "search":
            return {"ok": True, **backend.search(message, gone)}
        if op == "stop":
            stop()
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}
    except (ValueError, ClientGone) as error:
        return {"ok": False, "error": str(error)}
    except Exception as error:  # a bad request must not take the server down
        log(f"a request failed: {type(error).__name__}: {error}")
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


class _QuietErrors:
    """A client that hangs up early is no error of the server's: nothing in the log."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            log(f"connection failed: {type(error).__name__}: {error}")


class _UnixServer(_QuietErrors, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # A full backlog refuses a Unix-socket connect at once (EAGAIN), and that client
    # would load the model itself: leave room for many commands starting together.
    request_queue_size = 128


_socket_names = itertools.count()


def run(
    embedder: Embedder,
    *,
    detach: bool = False,
    idle_minutes: float = 30.0,
    http: str | None = None,
    api_key: str | None = None,
    note: Callable[[str], None] = lambda message: None,
    warn: Callable[[str], None] = lambda message: None,
) -> None:
    """Serve ``embedder``'s model until stopped or idle; with ``detach``, start a server in
    the background and return once it answers.

    ``embedder`` should have no cache and no server of its own: the server computes what
    its clients lack. One server per key (model, settings, files): another raises
    :class:`UsageError`, as do an unusable runtime folder and an address in use.
    """
    from modernbert_cli import client, openai_api
    from modernbert_cli.errors import CliError, UsageError
    from modernbert_cli.model import ModelFiles

    client.usable_runtime_dir()
    model = embedder.settings.model
    address = openai_api.parse_http_address(http) if http else None
    if ModelFiles.find(model).directory is None:
        embedder.load()  # a hub model not fetched yet: fetch it first, so the key names its files
    key = embedder.server_key()
    url = openai_api.http_url(address) if address else None
    try:
        lock = client.lock_server(key, {"model": embedder.name, "http": url})
    except client.ServerRunning as error:
        raise UsageError(
            f"a server for {model} already runs ({error.where}); 'serve stop' stops it"
        ) from None
    listener = None
    try:
        path = client.socket_path(key)
        if client.is_alive(path, key):  # a server that holds no lock (an older version)
            raise UsageError(f"a server for {model} already runs on {path}")
        listener = openai_api.bind_http(address) if address else None  # before the model load
        warning = openai_api.exposure_warning(address, api_key) if address else None
        if warning:
            warn(warning)
        if detach:
            if listener is not None:
                listener.close()  # the address is free: the server will listen on it itself
                listener = None
            args = ["serve", *embedder.settings.argv(), "--idle-timeout", str(idle_minutes)]
            args += ["--http", http] if http else []
            # The key travels in the environment, not in argv, where `ps` shows it.
            env = {openai_api.API_KEY_ENV: api_key} if api_key else {}
            try:
                pid, log = client.start_detached(args, key, lock, env)
            except client.ServerError as error:
                raise CliError(str(error)) from None
            note(f"server of {model} started (pid {pid}); log: {log}")
            return
        _serve_loaded(embedder, key, idle_minutes * 60, listener, lock, api_key, note)
    finally:
        if listener is not None:
            listener.close()
        lock.close()


def _serve_loaded(
    embedder: Embedder,
    key: str,
    idle_seconds: float,
    listener: socket.socket | None,
    lock: ServerLock,
    api_key: str | None,
    note: Callable[[str], None],
) -> None:
    """Load the model and serve it here, under ``key``, until stopped or idle."""
    from modernbert_cli import client
    from modernbert_cli.errors import ModelError, UsageError

    embedder.load()
    if embedder.server_key() != key:  # the key names the files it serves: they must be these
        raise ModelError(f"model '{embedder.settings.model}': its files changed while it loaded")
    backend = Backend(
        embedder.encoder,
        key,
        idle_seconds,
        fingerprint=embedder.files_fingerprint(),
        started_as=embedder.settings.model,
    )
    try:
        serve(
            backend,
            client.socket_path(key),
            listener,
            ready=lambda where: note(f"serving {embedder.name} on {where}"),
            api_key=api_key,
            lock=lock,
        )
    except OSError as error:
        raise UsageError(f"cannot serve: {error.strerror or error}") from None


def serve(
    backend: Backend,
    path: Path,
    http: tuple[str, int] | socket.socket | None = None,
    ready: Callable[[str], None] | None = None,
    *,
    api_key: str | None = None,
    lock: ServerLock | None = None,
) -> None:
    """Serve until stopped, idle too long, or interrupted; the socket (and lock) go after.

    ``http``: an address to listen on, or a socket :func:`bind_http` made already.
    """
    from modernbert_cli import openai_api

    listener = openai_api.bind_http(http) if isinstance(http, tuple) else http

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
                reply = handle(backend, message, stop, lambda: peer_gone(sock))
                try:
                    send(sock, reply)
                except OSError:
                    return

    # Listen under a temporary name, then rename: a client never finds the socket file
    # of a server that does not listen yet (and takes it for a dead one's).
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{next(_socket_names)}")
    old_mask = os.umask(0o177)  # the socket is created 0600
    try:
        server = _UnixServer(str(temporary), Handler)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    finally:
        os.umask(old_mask)
    os.replace(temporary, path)  # over a stale socket of a dead server
    made = path.stat()

    def remove_socket() -> None:
        """Remove this server's socket, never one a newer server has put in its place."""
        with contextlib.suppress(OSError):
            now = path.stat()
            if (now.st_ino, now.st_ctime_ns) == (made.st_ino, made.st_ctime_ns):
                path.unlink()

    web = None
    if listener is not None:
        web = openai_api.make_server(backend, listener, api_key)
        backend.http = openai_api.http_url(listener.getsockname())
    stopping = threading.Event()

    def stop() -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()
            if web is not None:
                threading.Thread(target=web.shutdown, daemon=True).start()

    def watch_idle() -> None:
        while not stopping.wait(1.0):
            idle = time.monotonic() - backend.last_request > backend.idle_timeout
            if idle and not backend.busy:
                stop()

    threading.Thread(target=watch_idle, daemon=True, name="idle-timeout").start()
    # `kill PID` stops the server as `serve stop` does, so its socket is removed.
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop())
    if web is not None:
        threading.Thread(target=web.serve_forever, daemon=True, name="http").start()
    if ready is not None:
        ready(str(path) + (f" and {backend.http}/v1" if backend.http else ""))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        server.server_close()
        if web is not None:
            web.server_close()
        remove_socket()
        if lock is not None:
            lock.release()
