"""The library: :class:`Embedder`, a model (loaded on first need) and everything around it.

One ``Embedder`` is one model with its :class:`~modernbert_cli.settings.Settings`. It
asks the embedding cache first, then a warm ``modernbert-cli serve`` of the same model
and settings, and loads the model itself only for what neither has; once loaded, the
model stays loaded for the Embedder's life. The command line, the server and the
batch workers are all callers of this class.

Constructing one imports no torch: a bad model path fails at once, a cached or
server-backed run never pays for torch at all.

>>> from modernbert_cli import Embedder
>>> with Embedder("minilm", cache=False, server=False) as emb:  # doctest: +SKIP
...     vectors = emb.embed(["a cat sat on the mat", "a dog lay on the rug"])
...     hits = emb.similar("where did the cat sit?", ["on the mat", "in the car"], top_k=1)
>>> vectors.shape, hits[0].text  # doctest: +SKIP
((2, 384), 'on the mat')
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modernbert_cli.errors import InputError, SettingError
from modernbert_cli.settings import DEFAULT_MODEL, Settings

if TYPE_CHECKING:
    import numpy as np

    from modernbert_cli.encoder import EncodeOptions, Encoder, Role
    from modernbert_cli.engine import ProgressFn
    from modernbert_cli.hits import Hit

# Texts embedded (and read, when they come from a stream) at a time: large enough to
# keep a GPU busy, small enough that memory does not depend on the size of the input.
CHUNK_TEXTS = 8192
# Kept rows scored at a time: their float64 copy (3 MB of minilm's) stays in the CPU's
# cache while it is scored, twice as fast as 8192 rows at a time.
KEPT_ROWS = 1024


def _log(level: str) -> Callable[[str], None]:
    """Messages to the ``modernbert_cli`` logger (imported on first message: it costs)."""

    def log(message: str) -> None:
        import logging

        getattr(logging.getLogger("modernbert_cli"), level)(message)

    return log


class Embedder:
    """A sentence-embedding model, loaded on first need, with cache and warm server.

    Keywords are the fields of :class:`~modernbert_cli.settings.Settings` (``device``,
    ``max_seq_length``, ``dtype``, ``quantize``, ``cache``, ``server``, …); the command
    line's options are the same settings. ``note`` and ``warn`` receive messages
    meant for a person (default: the ``modernbert_cli`` logger); ``loading`` wraps the
    model load (the command line shows a spinner); ``expected_texts`` tells the engine
    how big the job is (``compile="auto"`` compiles big jobs only).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        note: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        loading: Callable[[str], AbstractContextManager[Any]] | None = None,
        expected_texts: int | None = None,
        **settings: Any,
    ) -> None:
        self.settings = Settings(model=model, **settings)
        self._note = note or _log("info")
        self._warn = warn or _log("warning")
        self._loading = loading or (lambda name: nullcontext())
        self._expected = expected_texts
        self._encoder: Encoder | None = None
        from modernbert_cli.model import ModelFiles, canonical_name

        # A bad path or a missing package fails here, before any text is read or torch
        # imported; a hub model not downloaded yet is looked for again when it loads.
        self._files = ModelFiles.find(self.settings.model)
        self.name = canonical_name(self.settings.model)

    @classmethod
    def from_settings(cls, settings: Settings, **hooks: Any) -> Embedder:
        """An Embedder for a :class:`Settings` value (``hooks``: note, warn, loading, …)."""
        values = asdict(settings)
        return cls(values.pop("model"), **hooks, **values)

    # -- what runs where -----------------------------------------------------------------

    def vector_settings(self) -> dict[str, Any]:
        """The settings that change this model's vectors, ``auto`` resolved (no model load)."""
        from modernbert_cli.engine import effective_dtype

        return self.settings.vector_settings(
            effective_dtype(self.settings.device, self.settings.dtype)
        )

    def files_fingerprint(self) -> str:
        """The model's files (path, sizes, times) and the settings that change its vectors."""
        from modernbert_cli.cache import fingerprint

        if self._files.directory is None:  # a hub model: it may have been fetched since
            self._files = self._files.refreshed()
        return fingerprint(self._files.directory, self.name, self.vector_settings())

    def server_key(self) -> str:
        """Which warm server may answer for this Embedder: same model, settings and files.

        New weights under the same path make a new key: a server still running the old
        ones is never asked (and its vectors never cached as the new model's).
        """
        from modernbert_cli.client import server_key

        return server_key(self.name, self.vector_settings(), self.files_fingerprint())

    @property
    def encoder(self) -> Encoder:
        """The Encoder behind this Embedder (made on first use; the model loads later)."""
        if self._encoder is None:
            self._encoder = self._make_encoder()
        return self._encoder

    def _make_encoder(self) -> Encoder:
        from modernbert_cli.encoder import Encoder
        from modernbert_cli.engine import EngineOptions

        s = self.settings
        cache = None
        if s.cache:
            from modernbert_cli.cache import EmbeddingCache, default_path

            cache = EmbeddingCache(default_path(), s.cache_max_mb << 20, warn=self._warn)
        engine = EngineOptions(
            max_batch_tokens=s.max_batch_tokens,
            max_batch_size=s.batch_size,
            dtype=s.dtype,
            compile=s.compile,
            quantize=s.quantize,
        )
        return Encoder(
            name=self.name,
            engine_options=engine,
            expected_texts=self._expected,
            loader=self._load,
            cache=cache,
            server=self._server() if s.server else None,
            note=self._note,
            files=self._files,
            settings=self.vector_settings(),
        )

    def _server(self) -> Any:
        """A client of the warm server for this very model and settings, if one runs."""
        from modernbert_cli.client import ServerClient, ServerError, socket_path

        key = self.server_key()
        try:
            path = socket_path(key)
        except (OSError, ServerError):  # no runtime folder of ours: no server either
            return None
        return ServerClient(path, key) if path.exists() else None

    def _load(self) -> tuple[Any, list[str]]:
        """The model on its first device, and every device the work is shared by."""
        from modernbert_cli import model

        spec = model.ModelSpec(
            self.settings.model,
            self.settings.device,
            self.settings.max_seq_length,
            self.settings.trust_remote_code,
        )
        with self._loading(self.settings.model):
            return model.load(spec), model.pick_devices(self.settings.device)

    def load(self) -> Embedder:
        """Load the model now (it otherwise loads when a text is missing from the cache)."""
        _ = self.encoder.model
        return self

    # -- facts about the model -------------------------------------------------------------

    @property
    def max_seq_length(self) -> int:
        """Tokens read per text; longer texts are truncated (read from files, no load)."""
        return self.encoder.max_seq_length

    @property
    def similarity_fn_name(self) -> str:
        """The model's own similarity function (``cosine`` for most)."""
        return self.encoder.similarity_fn_name

    @property
    def prompts(self) -> dict[str, str]:
        """The model's named prompts (``query``, ``document``, …)."""
        return self.encoder.prompts

    @property
    def dimensions(self) -> int:
        """Length of the model's vectors (loads the model)."""
        loaded = self.encoder.model
        get = getattr(loaded, "get_embedding_dimension", None)  # sentence-transformers >= 6
        return int(get() if get else loaded.get_sentence_embedding_dimension())

    @property
    def truncated(self) -> int:
        """How many texts embedded so far were longer than :attr:`max_seq_length`."""
        return self._encoder.truncated if self._encoder else 0

    @property
    def truncated_by_role(self) -> dict[Role | None, tuple[int, int]]:
        """Per role (``"query"``, ``"document"``, None): (texts truncated, texts embedded)."""
        counts = self._encoder.by_role if self._encoder else {}
        return {role: (cut, texts) for role, (texts, cut) in counts.items()}

    @property
    def progress(self) -> ProgressFn | None:
        """Called as ``progress(texts, tokens)`` after each batch the model runs."""
        return self.encoder.progress

    @progress.setter
    def progress(self, value: ProgressFn | None) -> None:
        self.encoder.progress = value

    def describe(self, **options: Any) -> dict[str, Any]:
        """What vectors made with these ``embed`` options are, for saved files to carry.

        >>> Embedder("minilm").describe(precision="int8")["precision"]  # doctest: +SKIP
        'int8'
        """
        from modernbert_cli import __version__

        encode = self._options(**options)
        role = options.get("role")
        # No dimensions: they would load the model, and the vectors themselves say.
        return {
            "model": self.name,
            "fingerprint": self.encoder.fingerprint(encode, role),
            "precision": encode.precision,
            "normalized": encode.normalize,
            "prompt": self.encoder.prompt_text(encode, role),
            "prompt_name": encode.prompt_name,
            "truncate_dim": encode.truncate_dim,
            "similarity": self.similarity_fn_name,
            **self.vector_settings(),
            "modernbert_cli": __version__,
        }

    # -- the work --------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
        role: Role | None = None,
        normalize: bool = False,
        precision: str = "float32",
        truncate_dim: int | None = None,
    ) -> np.ndarray:
        """One vector per text, in order: ``SentenceTransformer.encode``'s numbers.

        ``role`` (``"query"`` or ``"document"``) applies the model's prompt of that name
        when it has one; ``prompt``/``prompt_name`` set one explicitly. ``precision``
        is sentence-transformers' ``quantize_embeddings`` (int8/uint8 are calibrated
        on the first call's texts and reused for later calls).
        """
        options = self._options(
            prompt=prompt,
            prompt_name=prompt_name,
            normalize=normalize,
            precision=precision,
            truncate_dim=truncate_dim,
        )
        self.encoder.check(options)
        return self.encoder.encode(_strings(texts), options, role=role)

    def prompt_text(self, role: Role | None = None, **options: Any) -> str:
        """The text put before each input by ``embed`` with these options ("" for none)."""
        return self.encoder.prompt_text(self._options(**options), role)

    def check(self, **options: Any) -> None:
        """Refuse ``embed`` options that cannot work with this model, before any work."""
        self.encoder.check(self._options(**options))

    def similar(
        self,
        query: str,
        corpus: Iterable[Any],
        *,
        top_k: int | None = 10,
        threshold: float | None = None,
        metric: str | None = None,
        distinct: Callable[[Any], Hashable] | None = None,
    ) -> list[Hit]:
        """The corpus ranked by similarity to ``query``, best first (``top_k`` of them).

        Each hit has ``.rank``, ``.score``, ``.text``, ``.source`` and ``.index``.
        """
        return self.similar_many(
            [query], corpus, top_k=top_k, threshold=threshold, metric=metric, distinct=distinct
        )[0]

    def similar_many(
        self,
        queries: Sequence[str],
        corpus: Iterable[Any],
        *,
        top_k: int | None = 10,
        threshold: float | None = None,
        metric: str | None = None,
        corpus_embeddings: np.ndarray | None = None,
        truncate_dim: int | None = None,
        distinct: Callable[[Any], Hashable] | None = None,
    ) -> list[list[Hit]]:
        """For each query, the best corpus items; the corpus is embedded once, streamed.

        ``corpus`` may be any iterable of strings or :class:`~modernbert_cli.inputs.Text`
        (memory holds one chunk of it and the best ``top_k`` per query). With
        ``corpus_embeddings``, those rows are scored and ``corpus`` only labels them.
        ``distinct`` keeps only the best of items with the same key, e.g. one passage
        per file: ``distinct=lambda passage: passage.path``. ``truncate_dim`` cuts queries
        and corpus to that many dimensions (Matryoshka models).
        """
        if threshold is not None and not math.isfinite(threshold):
            # NaN compares false with every score: it would silently return nothing.
            raise SettingError("threshold", "must be a finite number", threshold)
        metric = metric or self.similarity_fn_name
        if corpus_embeddings is None:
            if distinct is None:
                answered, corpus = self._similar_on_server(
                    queries, corpus, top_k, threshold, metric, truncate_dim
                )
                if answered is not None:
                    return answered
            options = self._options(truncate_dim=truncate_dim)
            self.encoder.check(options)

            def embed(
                texts: list[str], role: Role, blocks: Sequence[tuple[bytes, int, int]] = ()
            ) -> np.ndarray:
                return self.encoder.encode(texts, options, role=role, blocks=blocks)

            return rank(
                embed,
                _strings(queries),
                corpus,
                top_k=top_k,
                threshold=threshold,
                metric=metric,
                distinct=distinct,
                kept=lambda key: self.encoder.encode_kept(key, options, role="document"),
            )
        from modernbert_cli.scoring import TopK

        query_vectors = self.embed(_strings(queries), role="query", truncate_dim=truncate_dim)
        best = TopK(len(queries), metric, k=top_k, threshold=threshold, distinct=distinct)
        made, makes = corpus_embeddings.shape[1], query_vectors.shape[1]
        if made != makes:
            raise SettingError(
                "corpus_embeddings",
                f"has {made} dimensions but model '{self.name}' makes {makes}",
            )
        best.add(query_vectors, corpus_embeddings, list(corpus))
        return best.results()

    def _similar_on_server(
        self,
        queries: Sequence[Any],
        corpus: Iterable[Any],
        top_k: int | None,
        threshold: float | None,
        metric: str,
        truncate_dim: int | None,
    ) -> tuple[list[list[Hit]] | None, Iterable[Any]]:
        """The hits, when a warm server ranked the corpus (and asked the cache) for us.

        Then this process needs neither numpy nor the cache file: a one-off query costs
        a socket round trip. Otherwise (no server, more than one request holds, a server
        too old or failing) the hits are None and the corpus comes back whole, to be
        ranked here.
        """
        from modernbert_cli import client
        from modernbert_cli.settings import METRICS

        if not self.settings.server or self.encoder.server is None:
            return None, corpus
        from modernbert_cli.passages import KeptFile

        iterator = iter(corpus)
        head, size = [], 0
        for item in iterator:  # one request's worth, a kept file counted by its passages
            head.append(item)
            size += item.count if isinstance(item, KeptFile) else 1
            if size > client.MAX_INPUTS:
                return None, chain(head, iterator)
        corpus = head = [
            passage
            for item in head
            for passage in (_read_whole(item) if isinstance(item, KeptFile) else [item])
        ]
        try:  # one request's worth (a bigger corpus streams past here, a chunk at a time)
            fits = len(client.request_parts([*_strings(queries), *_strings(head)])) == 1
        except client.ServerError:  # a text over the server's limit: ranked here
            fits = False
        if not fits:
            return None, corpus
        if metric not in METRICS:  # as scoring words it
            raise SettingError("metric", f"choose from {', '.join(METRICS)}", metric)
        from modernbert_cli.client import ServerError, UnknownOp
        from modernbert_cli.hits import Hit

        encoder = self.encoder
        cache = encoder.cache
        where = None if cache is None or cache.disabled else (str(cache.path), cache.max_bytes)
        try:
            reply = encoder.server.similar(
                _strings(queries),
                _strings(head),
                top_k=top_k,
                threshold=threshold,
                metric=metric,
                truncate_dim=truncate_dim,
                cache=where,
            )
            hits = [
                [Hit(n, int(i), float(score), head[int(i)]) for n, (i, score) in enumerate(row, 1)]
                for row in reply["hits"]
            ]
            cut = [(role, int(texts), int(n)) for role, texts, n in reply.get("by_role") or []]
        except UnknownOp:
            return None, corpus
        except (ServerError, LookupError, TypeError, ValueError) as error:
            encoder.server = None
            self._note(f"{error}; working in-process instead")
            return None, corpus
        self._count_on_server(cut)
        for warning in reply.get("warnings") or []:
            self._warn(str(warning))
        if encoder.progress is not None:
            encoder.progress(len(queries) + len(head), 0)
        return hits, corpus

    def search_on_server(
        self,
        queries: Sequence[str],
        names: Sequence[str],
        *,
        passage_tokens: int | None,
        overlap: int | None,
        max_line_bytes: int,
        top_k: int | None,
        threshold: float | None,
        metric: str,
        per_document: bool,
        on_skip: Callable[[Any], None],
    ) -> list[list[Hit]] | None:
        """``similar_many`` over the passages of the files and folders ``names``, as
        :meth:`similar_many` ranks :meth:`Splitter.passages` with ``kept_files``, done by
        a warm server: the walk, both caches, the model and the ranking there.

        Then this process reads no file and imports no numpy. None when there is no such
        server, it is too old or fails, or the run should report an error of its own:
        then rank here. The server's warnings go to this Embedder's ``warn`` and its skips
        to ``on_skip``, in the order they came.
        """
        import os

        from modernbert_cli import client
        from modernbert_cli.settings import METRICS

        if not self.settings.server or self.encoder.server is None:
            return None
        if threshold is not None and not math.isfinite(threshold):
            return None
        queries = _strings(queries)
        if metric not in METRICS or any(len(q) > client.MAX_INPUT_CHARS for q in queries):
            return None
        files = self.encoder.files
        if files is None or files.directory is None or len(queries) > client.MAX_INPUTS:
            return None
        from modernbert_cli.hits import Hit
        from modernbert_cli.passages import Passage, split_bound
        from modernbert_cli.walk import Skipped

        here = os.getcwd()
        # The server walks absolute paths and names what it finds as this process would.
        given = [[str(Path(here, name)), name] for name in names]
        encoder, settings = self.encoder, self.settings
        cache = encoder.cache
        where = None if cache is None or cache.disabled else (str(cache.path), cache.max_bytes)
        split_cache = None
        if settings.cache:
            from modernbert_cli.split_cache import default_path

            split_cache = {
                "path": str(default_path()),
                "max_bytes": split_bound(settings.cache_max_mb),
            }
        try:
            reply = encoder.server.search(
                {
                    "queries": queries,
                    "names": given,
                    "passage_tokens": passage_tokens,
                    "overlap": overlap,
                    "limit": self.max_seq_length or None,
                    "prompt": self.prompt_text(role="document"),
                    "directory": str(files.directory),
                    "max_line_bytes": max_line_bytes,
                    "top_k": top_k,
                    "threshold": threshold,
                    "metric": metric,
                    "per_document": per_document,
                    "cache": None if where is None else {"path": where[0], "max_bytes": where[1]},
                    "split_cache": split_cache,
                }
            )
            if "redo" in reply:
                return None
            hits = [
                [
                    Hit(n, int(i), float(score), Passage(path, start, end, text))
                    for n, (i, score, path, start, end, text) in enumerate(row, 1)
                ]
                for row in reply["hits"]
            ]
            cut = [(role, int(texts), int(n)) for role, texts, n in reply.get("by_role") or []]
            events = [list(event) for event in reply.get("events") or []]
        except client.UnknownOp:
            return None
        except (client.ServerError, LookupError, TypeError, ValueError) as error:
            encoder.server = None
            self._note(f"{error}; working in-process instead")
            return None
        self._count_on_server(cut)
        for kind, *what in events:
            if kind == "skip":
                path, reason, folder = what
                on_skip(Skipped(Path(path), reason, bool(folder)))
            else:
                self._warn(str(what[0]))
        return hits

    def _count_on_server(self, cut: list[tuple[Any, int, int]]) -> None:
        """Texts embedded and cut by a server for this command, counted as if here."""
        encoder = self.encoder
        for role, texts, n in cut:  # the truncation note counts them
            counts = encoder.by_role.setdefault(role, [0, 0])
            counts[0] += texts
            counts[1] += n
            encoder.truncated += n

    def matrix(
        self,
        texts: Sequence[Any],
        against: Sequence[Any] | None = None,
        *,
        metric: str | None = None,
    ) -> np.ndarray:
        """Scores of every pair: N×N of ``texts``, or N×M against ``against``."""
        from modernbert_cli.scoring import matrix

        rows = self.embed(_strings(texts))
        columns = rows if against is None else self.embed(_strings(against))
        return matrix(rows, columns, metric or self.similarity_fn_name)

    def pairwise(self, a: Sequence[Any], b: Sequence[Any], *, metric: str | None = None):
        """One score per pair: ``a[i]`` with ``b[i]``."""
        from modernbert_cli.scoring import pairwise

        if len(a) != len(b):
            raise SettingError("pairwise", f"needs as many a as b texts: {len(a)} vs {len(b)}")
        vectors = self.embed([*_strings(a), *_strings(b)])
        return pairwise(vectors[: len(a)], vectors[len(a) :], metric or self.similarity_fn_name)

    # -- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Record cache statistics and let go of the cache file and server connection."""
        if self._encoder is not None:
            self._encoder.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Embedder({self.settings.model!r})"

    @staticmethod
    def _options(**options: Any) -> EncodeOptions:
        from modernbert_cli.encoder import EncodeOptions

        options.pop("role", None)
        return EncodeOptions(**options)


def rank(
    embed: Callable[..., np.ndarray],
    queries: list[str],
    corpus: Iterable[Any],
    *,
    top_k: int | None,
    threshold: float | None,
    metric: str,
    distinct: Callable[[Any], Hashable] | None = None,
    kept: Callable[[bytes], tuple[np.ndarray, np.ndarray | None] | None] | None = None,
) -> list[list[Hit]]:
    """For each query, the best of ``corpus`` (streamed a chunk at a time) by ``metric``.

    ``embed(texts, role)`` gives the vectors; the warm server ranks with this too, so
    its answers are the ones this process would give. A
    :class:`~modernbert_cli.passages.KeptFile` in ``corpus`` stands for its passages:
    ``kept(key)`` gives their vectors as kept for the whole file (and the rows' lengths,
    if known), scored as one matrix with those of the kept files next to it, and its
    passages read only if one is among the best; a file with none kept is read and
    embedded with the rest, ``embed(texts, role, blocks)`` told its rows (key, start,
    end) so that they are kept for the next query.
    """
    import numpy as np

    from modernbert_cli.passages import KeptFile
    from modernbert_cli.scoring import TopK

    query_vectors = embed(queries, "query")
    best = TopK(len(queries), metric, k=top_k, threshold=threshold, distinct=distinct)
    size = CHUNK_TEXTS  # read at call time: tests make it small
    pending: list[Any] = []
    blocks: list[tuple[bytes, int, int]] = []
    # Kept files in a row, scored together: one product, not one per file. Either these
    # or ``pending`` wait, never both: rows are numbered in corpus order.
    files: list[Any] = []
    vectors_of_files: list[np.ndarray] = []
    lengths_of_files: list[np.ndarray | None] = []
    starts = [0]

    def flush() -> None:
        if pending:
            texts = _strings(pending)
            vectors = embed(texts, "document", blocks) if blocks else embed(texts, "document")
            best.add(query_vectors, vectors, list(pending))
            pending.clear()
            blocks.clear()
        if files:
            # float64, as scoring takes them: one copy, not a join and then a copy.
            joined = np.concatenate(vectors_of_files, dtype=np.float64)
            unknown = any(lengths is None for lengths in lengths_of_files)
            known = None if unknown else np.concatenate(lengths_of_files)
            best.add(query_vectors, joined, _Rows(files, starts), known)
            files.clear()
            vectors_of_files.clear()
            lengths_of_files.clear()
            del starts[1:]

    for item in corpus:
        if not isinstance(item, KeptFile):
            if files:
                flush()
            pending.append(item)
        elif kept is None:
            if files:
                flush()
            pending.extend(_read_whole(item))
        elif (found := kept(item.block_key)) is not None and len(found[0]) == item.count:
            if pending:
                flush()
            files.append(item)
            vectors_of_files.append(found[0])
            lengths_of_files.append(found[1])
            starts.append(starts[-1] + item.count)
        else:
            if files:
                flush()
            passages = _read_whole(item)
            blocks.append((item.block_key, len(pending), len(pending) + len(passages)))
            pending.extend(passages)
        if len(pending) >= size or starts[-1] >= min(size, KEPT_ROWS):
            flush()
    flush()
    return _with_passages(best.results())


@dataclass(frozen=True)
class _Row:
    """Row ``row`` of a kept file, its passage not read yet (``path`` is all that
    ``distinct`` asks of it, for one passage per file)."""

    file: Any  # a KeptFile
    row: int

    @property
    def path(self) -> str:
        return self.file.path


class _Rows(Sequence[_Row]):
    """The rows of kept files, one after another, as ranking labels: made only for the
    rows kept. ``starts``: the row each file begins at, then the number of rows."""

    def __init__(self, files: list[Any], starts: list[int]) -> None:
        self.files, self.starts = list(files), list(starts)

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not 0 <= i < len(self):
            raise IndexError(i)
        at = bisect_right(self.starts, i) - 1
        return _Row(self.files[at], i - self.starts[at])


def _with_passages(results: list[list[Hit]]) -> list[list[Hit]]:
    """The hits with each kept file's row replaced by its passage: the files that hold a
    hit are read, each once; no other file is."""
    from modernbert_cli.hits import Hit

    files = {hit.item.file: None for hits in results for hit in hits if isinstance(hit.item, _Row)}
    read = {file: _read_whole(file) for file in files}
    return [
        [
            Hit(hit.rank, hit.index, hit.score, read[hit.item.file][hit.item.row])
            if isinstance(hit.item, _Row)
            else hit
            for hit in hits
        ]
        for hits in results
    ]


def _read_whole(file: Any) -> list[Any]:
    """The passages of a :class:`~modernbert_cli.passages.KeptFile`, as many as it said."""
    passages = list(file.passages())
    if len(passages) != file.count:
        raise InputError(f"{file.path}: changed while it was searched; search again")
    return passages


def chunks(items: Iterable[Any], size: int | None = None) -> Iterator[list[Any]]:
    """``items`` a list of ``size`` (default :data:`CHUNK_TEXTS`) at a time."""
    size = size or CHUNK_TEXTS  # read at call time: tests make it small
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _strings(items: Iterable[Any]) -> list[str]:
    """Texts as strings: plain strings, or anything with a ``.text`` (inputs.Text)."""
    out = [item if isinstance(item, str) else getattr(item, "text", item) for item in items]
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {i} is a {type(text).__name__}")
    return out
