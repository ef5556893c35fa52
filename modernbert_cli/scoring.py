"""Similarity scores and rankings from embeddings.

Scores come from sentence-transformers' own similarity functions, so they equal
``model.similarity`` (rankings score in float64, so theirs may differ in the last bit
of a float32). Results are plain data (:class:`Hit`, numpy arrays).

>>> hits = top_k(np.eye(2, dtype="float32")[:1], np.eye(2, dtype="float32"), "cosine", k=1)
>>> hits[0][0].index, round(hits[0][0].score, 3)
(0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METRICS = ("cosine", "dot", "euclidean", "manhattan")

# Rows of the score matrix computed at once when ranking: bounds memory for big
# query sets against big corpora (rows × corpus × 4 bytes).
_ROW_CHUNK = 256


@dataclass(frozen=True)
class Hit:
    """One ranked result: corpus row ``index`` (``item`` is what the caller gave for it)."""

    rank: int
    index: int
    score: float
    item: Any = None


def _functions(metric: str):
    # sentence-transformers (and torch) are imported only once scores are needed.
    from sentence_transformers import SimilarityFunction

    return (
        SimilarityFunction.to_similarity_fn(metric),
        SimilarityFunction.to_similarity_pairwise_fn(metric),
    )


def _as_float(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def matrix(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """All-pairs scores: ``out[i, j] = metric(a[i], b[j])``."""
    full, _ = _functions(metric)
    return full(_as_float(a), _as_float(b)).cpu().numpy()


def pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """One score per row pair: ``out[i] = metric(a[i], b[i])``."""
    _, pair = _functions(metric)
    return pair(_as_float(a), _as_float(b)).cpu().numpy()


def top_k(
    queries: np.ndarray,
    corpus: np.ndarray,
    metric: str,
    k: int | None = 10,
    threshold: float | None = None,
) -> list[list[Hit]]:
    """For each query, the ``k`` best corpus rows (all when ``k`` is None), best first."""
    best = TopK(len(queries), metric, k=k, threshold=threshold)
    best.add(queries, corpus, range(len(corpus)))
    return best.results()


class TopK:
    """The best ``k`` corpus rows per query, kept as the corpus streams past in chunks.

    Memory is queries × k whatever the corpus size. Ties keep corpus order, so
    results are the same however the corpus was chunked.
    """

    def __init__(
        self, queries: int, metric: str, k: int | None = 10, threshold: float | None = None
    ) -> None:
        self.metric = metric
        self.k = k
        self.threshold = threshold
        self.seen = 0
        self._scores = [np.empty(0, dtype=np.float32) for _ in range(queries)]
        self._indices = [np.empty(0, dtype=np.int64) for _ in range(queries)]
        self._items: dict[int, Any] = {}

    def add(self, queries: np.ndarray, corpus: np.ndarray, items: Sequence[Any]) -> None:
        """Score one chunk of the corpus (``items`` label its rows) and keep the best."""
        import torch

        full, _ = _functions(self.metric)
        # Scored in float64, then rounded to float32: BLAS picks its kernels by matrix
        # shape, so float32 products can differ in the last bit with the chunk's size
        # (or a row's position), which would break ties and depend on the chunking.
        corpus_t = torch.from_numpy(_as_float(corpus)).double()
        offset, self.seen = self.seen, self.seen + len(corpus)
        for start in range(0, len(queries), _ROW_CHUNK):
            query_t = torch.from_numpy(_as_float(queries[start : start + _ROW_CHUNK]))
            scores = full(query_t.double(), corpus_t).float()
            for row, chunk_scores in enumerate(scores.cpu().numpy(), start):
                self._merge(row, chunk_scores, offset)
        kept = {int(i) for indices in self._indices for i in indices}
        self._items = {i: self._items[i] if i < offset else items[i - offset] for i in kept}

    def _merge(self, row: int, chunk_scores: np.ndarray, offset: int) -> None:
        indices = np.arange(offset, offset + len(chunk_scores))
        if self.threshold is not None:
            keep = chunk_scores >= self.threshold
            chunk_scores, indices = chunk_scores[keep], indices[keep]
        scores = np.concatenate([self._scores[row], chunk_scores])
        indices = np.concatenate([self._indices[row], indices])
        order = np.lexsort((indices, -scores))  # best score first, then corpus order
        if self.k is not None:
            order = order[: self.k]
        self._scores[row], self._indices[row] = scores[order], indices[order]

    def results(self) -> list[list[Hit]]:
        return [
            [
                Hit(rank, int(i), float(score), self._items.get(int(i)))
                for rank, (score, i) in enumerate(zip(scores, indices, strict=True), 1)
            ]
            for scores, indices in zip(self._scores, self._indices, strict=True)
        ]
