"""Turning texts into embeddings with a loaded sentence-transformers model.

:class:`Encoder` gives the numbers of ``SentenceTransformer.encode`` (prompts,
normalisation, precision, truncated dimensions) through the faster
:class:`~modernbert_cli.engine.Engine`, and falls back to ``encode`` itself for a
model the engine does not know. It also counts what a command-line user needs to
know: the texts cut at the model's token limit.

>>> encoder = Encoder(model.load(ModelSpec("minilm")), "minilm")  # doctest: +SKIP
>>> encoder.encode(["a cat", "a dog"]).shape  # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modernbert_cli.engine import Engine, EngineOptions, ProgressFn
from modernbert_cli.errors import UsageError

Role = Literal["query", "document"]
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


@dataclass(frozen=True)
class EncodeOptions:
    """What to compute: the options of ``SentenceTransformer.encode`` the CLI exposes."""

    normalize: bool = False
    precision: str = "float32"
    truncate_dim: int | None = None
    prompt: str | None = None
    prompt_name: str | None = None


class Encoder:
    """A loaded model, ready to embed texts, one call or one chunk of a stream at a time."""

    def __init__(
        self,
        model: Any,
        name: str,
        devices: Sequence[str] | None = None,
        engine_options: EngineOptions | None = None,
        expected_texts: int | None = None,
    ) -> None:
        self.model = model
        self.name = name
        self.truncated = 0  # texts cut at max_seq_length so far
        self.progress: ProgressFn | None = None
        self._ranges: dict[str, np.ndarray] = {}  # int8/uint8 calibration, per role
        devices = list(devices or [str(model.device)])
        engine_options = engine_options or EngineOptions()
        if _engine_can_run(model):
            self.engine: Engine | None = Engine(model, devices, engine_options, expected_texts)
        else:
            if len(devices) > 1 or engine_options.quantize != "none":
                raise UsageError(
                    f"model '{name}' is not a plain text model: several devices and "
                    "--quantize are not available for it"
                )
            self.engine = None

    def check(self, options: EncodeOptions) -> None:
        """Reject options this model cannot honour, before any work is done."""
        if options.prompt is not None and options.prompt_name is not None:
            raise UsageError("--prompt and --prompt-name exclude each other")
        known = sorted(k for k, v in (self.model.prompts or {}).items() if v)
        if options.prompt_name is not None and options.prompt_name not in known:
            raise UsageError(
                f"--prompt-name '{options.prompt_name}': model '{self.name}' defines "
                + (f"the prompts {', '.join(known)}" if known else "no prompts")
            )
        if options.truncate_dim is not None and not 1 <= options.truncate_dim <= self.dimensions:
            raise UsageError(
                f"--truncate-dim must be between 1 and the model's {self.dimensions} dimensions"
            )

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def dimensions(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        return int(get() if get else self.model.get_sentence_embedding_dimension())

    @property
    def similarity_fn_name(self) -> str:
        return str(self.model.similarity_fn_name)

    def encode(
        self,
        texts: Sequence[str],
        options: EncodeOptions = EncodeOptions(),
        role: Role | None = None,
    ) -> np.ndarray:
        """Embeddings for ``texts`` in input order, equal to sentence-transformers' own.

        ``role`` picks the model's ``query``/``document`` prompt when it defines one
        (as ``encode_query``/``encode_document`` do); an explicit prompt wins. In a
        stream of calls, int8/uint8 use the ranges of the first call, so every chunk
        is quantized alike.
        """
        prompt = self._prompt_text(options, role)
        if self.engine is None:
            self.truncated += self._count_truncated(texts, prompt)
            vectors = self._encode_with_sentence_transformers(texts, options, role)
        else:
            lengths = self.engine.token_lengths(texts, prompt)
            self.truncated += int((lengths > self.max_seq_length).sum())
            vectors = self.engine.encode(
                texts,
                prompt=prompt or None,
                task=role,
                normalize=options.normalize,
                truncate_dim=options.truncate_dim,
                lengths=lengths,
                progress=self.progress,
            )
        return self._quantize(vectors, options.precision, role)

    def _encode_with_sentence_transformers(
        self, texts: Sequence[str], options: EncodeOptions, role: Role | None
    ) -> np.ndarray:
        method = {
            None: self.model.encode,
            "query": self.model.encode_query,
            "document": self.model.encode_document,
        }[role]
        vectors = method(
            list(texts),
            prompt=options.prompt,
            prompt_name=options.prompt_name,
            normalize_embeddings=options.normalize,
            truncate_dim=options.truncate_dim,
            convert_to_numpy=True,
        )
        if self.progress is not None:
            self.progress(len(texts), 0)
        return np.asarray(vectors, dtype=np.float32)

    def _quantize(self, vectors: np.ndarray, precision: str, role: Role | None) -> np.ndarray:
        """sentence-transformers' quantize_embeddings, with ranges fixed by the first chunk."""
        if precision == "float32":
            return vectors
        try:  # sentence-transformers >= 6
            from sentence_transformers.util.quantization import quantize_embeddings
        except ImportError:
            from sentence_transformers.quantization import quantize_embeddings

        if precision in ("int8", "uint8"):
            key = role or ""
            if key not in self._ranges:
                if len(vectors) < 2:
                    raise UsageError(
                        f"--precision {precision} calibrates its ranges on the texts "
                        "themselves: give at least two"
                    )
                self._ranges[key] = np.vstack([vectors.min(axis=0), vectors.max(axis=0)])
            return quantize_embeddings(vectors, precision=precision, ranges=self._ranges[key])
        return quantize_embeddings(vectors, precision=precision)

    def prompt_for(self, role: Role) -> str:
        """The model's own prompt for ``role`` ("" when it has none)."""
        return (self.model.prompts or {}).get(role) or ""

    def _prompt_text(self, options: EncodeOptions, role: Role | None) -> str:
        """The text sentence-transformers puts before each input (as ``_resolve_prompt``)."""
        if options.prompt is not None:
            return options.prompt
        prompts = self.model.prompts or {}
        name = options.prompt_name or (role if role in prompts else None)
        if name is None and role is None:
            name = self.model.default_prompt_name
        return prompts.get(name) or "" if name else ""

    def _count_truncated(self, texts: Sequence[str], prompt: str = "") -> int:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None or not texts:
            return 0
        encoded = tokenizer(
            [prompt + text for text in texts],
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        return sum(len(ids) > self.max_seq_length for ids in encoded)


def _engine_can_run(model: Any) -> bool:
    """The engine feeds text through ``preprocess``; anything else goes to ``encode``."""
    tokenizer = getattr(model, "tokenizer", None)
    return hasattr(model, "preprocess") and callable(tokenizer)
