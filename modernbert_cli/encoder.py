"""Turning texts into embeddings with a loaded sentence-transformers model.

:class:`Encoder` is a thin layer over ``SentenceTransformer.encode`` so that the
numbers are sentence-transformers' own; what it adds is what a command-line user
needs to know: how many texts were cut at the model's token limit.

>>> encoder = Encoder(model.load(ModelSpec("minilm")), "minilm")  # doctest: +SKIP
>>> encoder.encode(["a cat", "a dog"]).shape  # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modernbert_cli.errors import UsageError

Role = Literal["query", "document"]
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode: the options of ``SentenceTransformer.encode`` the CLI exposes."""

    batch_size: int = 32
    normalize: bool = False
    precision: str = "float32"
    truncate_dim: int | None = None
    prompt: str | None = None
    prompt_name: str | None = None
    show_progress: bool = False


class Encoder:
    """A loaded model, ready to embed texts."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self.truncated = 0  # texts cut at max_seq_length so far

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
        return int(self.model.get_sentence_embedding_dimension())

    @property
    def similarity_fn_name(self) -> str:
        return str(self.model.similarity_fn_name)

    def encode(
        self,
        texts: Sequence[str],
        options: EncodeOptions = EncodeOptions(),
        role: Role | None = None,
    ) -> np.ndarray:
        """Embeddings for ``texts`` in input order, exactly as sentence-transformers makes them.

        ``role`` picks the model's ``query``/``document`` prompt when it defines one
        (as ``encode_query``/``encode_document`` do); an explicit prompt wins.
        """
        prompt_text = self._prompt_text(options, role)
        self.truncated += self.count_truncated(texts, prompt_text)
        method = {
            None: self.model.encode,
            "query": self.model.encode_query,
            "document": self.model.encode_document,
        }[role]
        embeddings = method(
            list(texts),
            prompt=options.prompt,
            prompt_name=options.prompt_name,
            batch_size=options.batch_size,
            normalize_embeddings=options.normalize,
            precision=options.precision,
            truncate_dim=options.truncate_dim,
            show_progress_bar=options.show_progress,
            convert_to_numpy=True,
        )
        return np.asarray(embeddings)

    def prompt_for(self, role: Role) -> str:
        """The model's own prompt for ``role`` ("" when it has none)."""
        return (self.model.prompts or {}).get(role) or ""

    def _prompt_text(self, options: EncodeOptions, role: Role | None) -> str:
        """The text sentence-transformers will put before each input, for counting tokens."""
        if options.prompt is not None:
            return options.prompt
        prompts = self.model.prompts or {}
        name = options.prompt_name or (role if role in prompts else None)
        if name is None and role is None:
            name = self.model.default_prompt_name
        return prompts.get(name) or "" if name else ""

    def count_truncated(self, texts: Sequence[str], prompt: str = "") -> int:
        """How many texts (with their prompt) are longer than ``max_seq_length`` tokens."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None or not texts:
            return 0
        limit = self.max_seq_length
        # Cheap next to the model: a fast tokenizer does over a million tokens/s.
        encoded = tokenizer(
            [prompt + text for text in texts],
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        return sum(len(ids) > limit for ids in encoded)
