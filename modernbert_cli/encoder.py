"""Turning texts into embeddings: the cache first, then the model for what is missing.

:class:`Encoder` gives the numbers of ``SentenceTransformer.encode`` (prompts,
normalisation, precision, truncated dimensions). It asks the
:class:`~modernbert_cli.cache.EmbeddingCache` first, sends only the texts it lacks
to the faster :class:`~modernbert_cli.engine.Engine` (or to ``encode`` itself for a
model the engine does not know), and loads the model only when some text is
missing: a fully cached run never imports torch's model stack at all. It also
counts what a command-line user needs to know: the texts cut at the token limit.

>>> encoder = Encoder(model.load(ModelSpec("minilm")), "minilm")  # doctest: +SKIP
>>> encoder.encode(["a cat", "a dog"]).shape  # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from modernbert_cli.engine import Engine, EngineOptions, ProgressFn, token_counts
from modernbert_cli.errors import SettingError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from modernbert_cli.cache import EmbeddingCache, KeptBlocks
    from modernbert_cli.client import ServerClient
    from modernbert_cli.model import ModelFiles

Role = Literal["query", "document"]


@dataclass(frozen=True)
class EncodeOptions:
    """What to compute: the options of ``SentenceTransformer.encode`` the CLI exposes."""

    normalize: bool = False
    precision: str = "float32"
    truncate_dim: int | None = None
    prompt: str | None = None
    prompt_name: str | None = None


class Encoder:
    """A model, loaded now or on first need, ready to embed texts a call or a chunk at a time.

    Give ``model`` to use a loaded model, or ``loader`` (returning the model and its
    devices) to load it only when a text is not in ``cache``.
    """

    def __init__(
        self,
        model: Any = None,
        name: str = "model",
        devices: Sequence[str] | None = None,
        engine_options: EngineOptions | None = None,
        expected_texts: int | None = None,
        *,
        loader: Callable[[], tuple[Any, list[str]]] | None = None,
        cache: EmbeddingCache | None = None,
        server: ServerClient | None = None,
        note: Callable[[str], None] | None = None,
        files: ModelFiles | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.truncated = 0  # texts cut at max_seq_length so far
        # Per role (None: no role), texts embedded and how many of them were cut.
        self.by_role: dict[Role | None, list[int]] = {}
        self.hits = 0  # texts found in the cache
        self.misses = 0  # texts the model embedded
        self.progress: ProgressFn | None = None
        self.cache = cache
        # Kept blocks held in memory across requests (a warm server's), or None.
        self.kept_blocks: KeptBlocks | None = None
        self.server = server
        self.note = note or (lambda message: None)
        self.files = files
        self._settings = settings or {}
        self._engine_options = engine_options or EngineOptions()
        self._expected = expected_texts
        self._loader = loader
        self._ranges: dict[str, np.ndarray] = {}  # int8/uint8 calibration, per role
        # By (prompt, task), and by (options, role) as asked.
        self._fingerprints: dict[tuple[Any, ...], str] = {}
        self._counts: dict[str, list[int]] = {}  # fingerprint -> [hits, misses]
        self._model: Any = None
        self._engine: Engine | None = None
        if model is not None:
            self._attach(model, list(devices or [str(model.device)]))

    # -- the model, on demand ------------------------------------------------------------

    def _attach(self, model: Any, devices: list[str]) -> None:
        self._model = model
        if _engine_can_run(model):
            self._engine = Engine(model, devices, self._engine_options, self._expected)
        elif len(devices) > 1 or self._engine_options.quantize != "none":
            setting = "device" if len(devices) > 1 else "quantize"
            raise SettingError(
                setting, f"model '{self.name}' is not a plain text model: not available for it"
            )

    @property
    def model(self) -> Any:
        if self._model is None:
            if self._loader is None:
                raise RuntimeError("Encoder has neither a model nor a loader")
            self._attach(*self._loader())
        return self._model

    @property
    def engine(self) -> Engine | None:
        _ = self.model
        return self._engine

    def _config(self, key: str, default: Any = None) -> Any:
        """A setting of the model: from the loaded model, else from its files."""
        if self._model is None and self.files is not None and self.files.directory is not None:
            return self.files.config().get(key, default)
        value = getattr(self.model, key, None)
        return default if value is None else value

    @property
    def max_seq_length(self) -> int:
        return int(self._settings.get("max_seq_length") or self._config("max_seq_length", 0))

    @property
    def similarity_fn_name(self) -> str:
        return str(self._config("similarity_fn_name", "cosine"))

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self._config("prompts", {}) or {})

    def prompt_for(self, role: Role) -> str:
        """The model's own prompt for ``role`` ("" when it has none)."""
        return self.prompts.get(role) or ""

    def sharing(self, cache: EmbeddingCache | None, server: Any = None) -> Encoder:
        """An Encoder on the same model with ``cache``, ``server`` and counts of its own.

        The warm server answers a client's request with one, its model behind ``server``.
        """
        twin = copy.copy(self)
        twin.cache, twin.server, twin.progress = cache, server, None
        twin.truncated = twin.hits = twin.misses = 0
        twin.by_role, twin._ranges, twin._counts = {}, {}, {}
        return twin

    def check(self, options: EncodeOptions) -> None:
        """Reject options that cannot make sense, before any work is done."""
        if options.prompt is not None and options.prompt_name is not None:
            raise SettingError("prompt", "cannot be given with {prompt_name}")
        known = sorted(k for k, v in self.prompts.items() if v)
        if options.prompt_name is not None and options.prompt_name not in known:
            defined = f"the prompts {', '.join(known)}" if known else "no prompts"
            raise SettingError(
                "prompt_name", f"model '{self.name}' defines {defined}", options.prompt_name
            )

    def close(self) -> None:
        """Record this run's cache hits and misses (for ``modernbert-cli cache``)."""
        if self.cache is not None:
            for fingerprint, (hits, misses) in self._counts.items():
                self.cache.record(fingerprint, self.name, hits, misses, self._folder())
            self.cache.close()
        if self.server is not None:
            self.server.close()

    # -- encoding ------------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        options: EncodeOptions = EncodeOptions(),
        role: Role | None = None,
        blocks: Sequence[tuple[bytes, int, int]] = (),
    ) -> np.ndarray:
        """Embeddings for ``texts`` in input order, equal to sentence-transformers' own.

        ``role`` picks the model's ``query``/``document`` prompt when it defines one
        (as ``encode_query``/``encode_document`` do); an explicit prompt wins. In a
        stream of calls, int8/uint8 use the ranges of the first call, so every chunk
        is quantized alike. Each of ``blocks`` (key, start, end) names the texts of a
        whole file: their vectors are also kept in the cache as one row, for
        :meth:`encode_kept`.
        """
        raw, truncated = self._raw(texts, options, role)
        if blocks and self.cache is not None and not self.cache.disabled:
            fingerprint = self.fingerprint(options, role)
            for key, start, end in blocks:
                cut = int(truncated[start:end].sum())
                self.cache.store_block(
                    fingerprint, self.name, key, raw[start:end], cut, self._folder()
                )
        return self._finish(raw, int(truncated.sum()), options, role)

    def encode_kept(
        self, key: bytes, options: EncodeOptions = EncodeOptions(), role: Role | None = None
    ) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The vectors of a whole file's texts as :meth:`encode` kept them under ``key``
        (one cache row, not one per text), and their rows' lengths when known (held with
        them in :attr:`kept_blocks`); None when none are kept."""
        if self.cache is None or self.cache.disabled:
            return None
        fingerprint = self.fingerprint(options, role)
        # Named by the model, options and the file's content: never another file's.
        found = None if self.kept_blocks is None else self.kept_blocks.get((fingerprint, key))
        lengths = None
        if found is None:
            block = self.cache.block(fingerprint, key)
            if block is None:
                return None
            raw, cut = block
            if self.kept_blocks is not None:
                lengths = self.kept_blocks.put((fingerprint, key), block).lengths
        else:
            raw, cut, lengths = found
        self.hits += len(raw)
        self._counts.setdefault(fingerprint, [0, 0])[0] += len(raw)
        if self.progress is not None:
            self.progress(len(raw), 0)
        vectors = self._finish(raw, cut, options, role)
        # The lengths are the raw rows': of no use once options change the vectors.
        return vectors, (lengths if vectors is raw else None)

    def _finish(
        self, raw: np.ndarray, cut: int, options: EncodeOptions, role: Role | None
    ) -> np.ndarray:
        """The model's float32 vectors as ``options`` ask (dimensions, normalised,
        precision), the truncated texts counted."""
        import numpy as np

        self.truncated += cut
        counts = self.by_role.setdefault(role, [0, 0])
        counts[0] += len(raw)
        counts[1] += cut
        if options.truncate_dim is not None:
            if not 1 <= options.truncate_dim <= raw.shape[1]:
                raise SettingError(
                    "truncate_dim",
                    f"must be between 1 and the model's {raw.shape[1]} dimensions",
                    options.truncate_dim,
                )
            raw = raw[:, : options.truncate_dim]
        if options.normalize:  # as torch.nn.functional.normalize, which encode uses
            norms = np.linalg.norm(raw, axis=1, keepdims=True)
            raw = raw / np.maximum(norms, 1e-12)
        return self._quantize(raw.astype(np.float32, copy=False), options.precision, role)

    def _raw(
        self, texts: Sequence[str], options: EncodeOptions, role: Role | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model's float32 outputs and which texts were truncated: cache, then model."""
        import numpy as np

        if self.cache is None or self.cache.disabled or not texts:
            self.misses += len(texts)
            return self._compute(texts, options, role)
        from modernbert_cli.cache import text_keys

        fingerprint = self.fingerprint(options, role)
        keys = text_keys(texts)
        found = self.cache.vectors(fingerprint, keys)
        # Each missing text once (a text given twice is computed once, counted once).
        missing = list({keys[i]: i for i in np.flatnonzero(~found.hit).tolist()}.values())
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        counts = self._counts.setdefault(fingerprint, [0, 0])
        counts[0] += len(texts) - len(missing)
        counts[1] += len(missing)
        vectors, truncated = found.vectors, found.truncated
        if missing:
            fresh, cut = self._compute([texts[i] for i in missing], options, role)
            items = [(keys[i], fresh[j], bool(cut[j])) for j, i in enumerate(missing)]
            self.cache.store(fingerprint, self.name, items, self._folder())
            if vectors is None:
                vectors = np.zeros((len(texts), fresh.shape[1]), dtype=np.float32)
            which = {keys[i]: j for j, i in enumerate(missing)}
            places = np.flatnonzero(~found.hit)
            taken = [which[keys[i]] for i in places.tolist()]
            vectors[places] = fresh[taken]
            truncated[places] = np.asarray(cut, dtype=bool)[taken]
        if self.progress is not None and len(missing) < len(texts):
            self.progress(len(texts) - len(missing), 0)
        assert vectors is not None  # every text was found or computed
        return vectors, truncated

    def _compute(
        self, texts: Sequence[str], options: EncodeOptions, role: Role | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for texts the cache lacks: from a warm server if there is one, else here."""
        self.check(options)
        prompt = self.prompt_text(options, role)
        if self.server is not None:
            from modernbert_cli.client import ServerError

            try:
                vectors, truncated = self.server.embed(list(texts), prompt or None, role)
            except ServerError as error:
                self.server = None
                self.note(f"{error}; working in-process instead")
            else:
                if self.progress is not None:
                    self.progress(len(texts), 0)
                return vectors, truncated
        return self.compute_prompted(texts, prompt, role)

    def compute_prompted(
        self, texts: Sequence[str], prompt: str, role: Role | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model's float32 vectors for ``prompt + text``, and which texts were truncated."""
        engine = self.engine  # loads the model on first need
        if engine is None:
            truncated = self._token_lengths(texts, prompt) > int(self.model.max_seq_length)
            return self._encode_with_sentence_transformers(texts, prompt, role), truncated
        counts = engine.token_counts(texts, prompt)
        truncated = counts.tokens > engine.max_seq_length
        vectors = engine.encode(
            texts, prompt=prompt or None, task=role, counts=counts, progress=self.progress
        )
        return vectors, truncated

    def _folder(self) -> Path | None:
        """Where the model's files are (recorded with its cache entries)."""
        return self.files.directory if self.files is not None else None

    def fingerprint(self, options: EncodeOptions, role: Role | None) -> str:
        """The cache key of the model as it runs now, with this prompt (and task)."""
        from modernbert_cli.cache import fingerprint

        files = self.files
        if files is not None and files.directory is None:
            _ = self.model  # a hub model not yet downloaded: its files come with it
            self.files = files = files.refreshed()
        # Asked once per file of a folder: the prompt is not looked up in the files again.
        asked = (options, role)
        found = self._fingerprints.get(asked)
        if found is not None:
            return found
        # The prompt text, not how it was asked for: embed and similar share entries.
        prompt = self.prompt_text(options, role)
        task = role if files is not None and files.has_router() else None
        key = (prompt, task)
        if key not in self._fingerprints:
            settings = {**self._settings, "prompt": prompt, "task": task}
            directory = files.directory if files is not None else None
            self._fingerprints[key] = fingerprint(directory, self.name, settings)
        self._fingerprints[asked] = self._fingerprints[key]
        return self._fingerprints[key]

    def _encode_with_sentence_transformers(
        self, texts: Sequence[str], prompt: str, role: Role | None
    ) -> np.ndarray:
        # The prompt is given as text, so plain encode with the task equals
        # encode_query/encode_document.
        import numpy as np

        task = {"task": role} if role else {}
        vectors = self.model.encode(list(texts), prompt=prompt, convert_to_numpy=True, **task)
        if self.progress is not None:
            self.progress(len(texts), 0)
        return np.asarray(vectors, dtype=np.float32)

    def _quantize(self, vectors: np.ndarray, precision: str, role: Role | None) -> np.ndarray:
        """sentence-transformers' quantize_embeddings, with ranges fixed by the first chunk."""
        if precision == "float32":
            return vectors
        import numpy as np

        from modernbert_cli.model import embedding_quantizer

        quantize_embeddings = embedding_quantizer()
        if precision in ("int8", "uint8"):
            key = role or ""
            if key not in self._ranges:
                if len(vectors) < 2:
                    raise SettingError(
                        "precision",
                        "calibrates its ranges on the texts themselves: give at least two",
                        precision,
                    )
                self._ranges[key] = np.vstack([vectors.min(axis=0), vectors.max(axis=0)])
            return quantize_embeddings(vectors, precision=precision, ranges=self._ranges[key])
        return quantize_embeddings(vectors, precision=precision)

    def prompt_text(self, options: EncodeOptions, role: Role | None) -> str:
        """The text sentence-transformers puts before each input (as ``_resolve_prompt``)."""
        if options.prompt is not None:
            return options.prompt
        prompts = self.prompts
        name = options.prompt_name or (role if role in prompts else None)
        if name is None and role is None:
            name = self._config("default_prompt_name")
        return prompts.get(name) or "" if name else ""

    def _token_lengths(self, texts: Sequence[str], prompt: str = "") -> np.ndarray:
        import numpy as np

        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None or not texts:
            return np.zeros(len(texts), dtype=np.int64)
        return token_counts(tokenizer, texts, prompt, int(self.model.max_seq_length)).tokens


def _engine_can_run(model: Any) -> bool:
    """The engine feeds text through ``preprocess``; anything else goes to ``encode``."""
    tokenizer = getattr(model, "tokenizer", None)
    return hasattr(model, "preprocess") and callable(tokenizer)
