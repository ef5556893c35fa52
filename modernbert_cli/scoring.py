"""Similarity scores and rankings from embeddings.

The metrics are sentence-transformers' (``cosine``, ``dot``, and ``euclidean`` and
``manhattan`` as negative distances), computed here with numpy in float64 and
returned as float32: they equal ``model.similarity`` to float rounding, need no torch
(a warm server ranks for its clients with them), and do not depend on how a corpus is
chunked, which keeps ties in corpus order. Results are plain data (:class:`Hit`,
numpy arrays).

>>> hits = top_k(np.eye(2, dtype="float32")[:1], np.eye(2, dtype="float32"), "cosine", k=1)
>>> hits[0][0].index, round(hits[0][0].score, 3)
(0, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from modernbert_cli.errors import SettingError
from modernbert_cli.hits import Hit
from modernbert_cli.settings import METRICS

# Rows of the score matrix computed at once when ranking: bounds memory for big
# query sets against big corpora (rows × corpus × 4 bytes).
_ROW_CHUNK = 256

__all__ = ["Hit", "TopK", "lengths", "matrix", "pairwise", "top_k"]

# Manhattan needs rows × columns × dimensions of work space: this many elements at once.
_MANHATTAN_BLOCK = 1 << 22


def _as_float(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float64)


def _unit(array: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as torch.nn.functional.normalize (eps 1e-12)."""
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def lengths(rows: np.ndarray) -> np.ndarray:
    """Each row's length, in float64: what cosine ranking divides a row's products by (a
    warm server keeps them beside a kept file's vectors)."""
    return np.linalg.norm(_as_float(rows), axis=1)


def _manhattan_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((len(a), len(b)))
    rows = max(1, _MANHATTAN_BLOCK // max(1, len(b) * a.shape[1]))
    for start in range(0, len(a), rows):
        block = a[start : start + rows, None, :] - b[None, :, :]
        out[start : start + rows] = -np.abs(block).sum(-1)
    return out


def _euclidean_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (a @ b.T)
    return -np.sqrt(np.maximum(squared, 0.0))


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b.T


# Each metric, three ways, on float64 rows: how rows are prepared (cosine: to length 1),
# all pairs of prepared rows (``out[i, j]``), and row by row (``out[i]``).
_Fn = Callable[..., np.ndarray]
_METRICS: dict[str, tuple[_Fn, _Fn, _Fn]] = {
    "cosine": (_unit, _products, lambda a, b: (_unit(a) * _unit(b)).sum(1)),
    "dot": (_same, _products, lambda a, b: (a * b).sum(1)),
    "euclidean": (_same, _euclidean_pairs, lambda a, b: -np.linalg.norm(a - b, axis=1)),
    "manhattan": (_same, _manhattan_pairs, lambda a, b: -np.abs(a - b).sum(1)),
}
assert tuple(_METRICS) == METRICS


def _metric(name: str) -> tuple[_Fn, _Fn, _Fn]:
    try:
        return _METRICS[name]
    except KeyError:
        raise SettingError("metric", f"choose from {', '.join(METRICS)}", name) from None


def _scores(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """float64 all-pairs scores of float64 rows."""
    prepare, pairs, _ = _metric(metric)
    return pairs(prepare(a), prepare(b))


def matrix(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """All-pairs scores: ``out[i, j] = metric(a[i], b[j])``."""
    return _scores(_as_float(a), _as_float(b), metric).astype(np.float32)


def pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """One score per row pair: ``out[i] = metric(a[i], b[i])``."""
    return _metric(metric)[2](_as_float(a), _as_float(b)).astype(np.float32)


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
    results are the same however the corpus was chunked. With ``distinct``, rows whose
    items give the same key (a passage's file) count once: only the best of them is kept.

    Cosine scores are the unit queries' products with the corpus rows, divided by each
    row's length: the rows themselves are not scaled (a pass over them, and a copy).
    """

    def __init__(
        self,
        queries: int,
        metric: str,
        k: int | None = 10,
        threshold: float | None = None,
        distinct: Callable[[Any], Hashable] | None = None,
    ) -> None:
        self.metric = metric
        self.k = k
        self.threshold = threshold
        self.distinct = distinct
        self.seen = 0
        self._prepare, self._pairs, _ = _metric(metric)
        self._scaled = metric == "cosine"  # the products divided by the rows' lengths
        # The queries as last prepared (in blocks of _ROW_CHUNK rows): a corpus streams
        # past the same queries, which are prepared once, not once per chunk.
        self._queries: tuple[np.ndarray, list[np.ndarray]] | None = None
        self._scores = [np.empty(0, dtype=np.float32) for _ in range(queries)]
        self._indices = [np.empty(0, dtype=np.int64) for _ in range(queries)]
        self._items: dict[int, Any] = {}

    def add(
        self,
        queries: np.ndarray,
        corpus: np.ndarray,
        items: Sequence[Any],
        corpus_lengths: np.ndarray | None = None,
    ) -> None:
        """Score one chunk of the corpus (``items`` label its rows) and keep the best.

        ``corpus_lengths``: the rows' :func:`lengths`, when known (else computed here).
        """
        corpus64 = _as_float(corpus)
        if self._scaled:
            if corpus_lengths is None:
                corpus_lengths = lengths(corpus64)
            divisor = np.maximum(corpus_lengths, 1e-12)
        else:
            corpus64 = self._prepare(corpus64)
        offset, self.seen = self.seen, self.seen + len(corpus)
        for n, block in enumerate(self._prepared(queries)):
            products = self._pairs(block, corpus64)
            if self._scaled:
                products /= divisor
            scores = products.astype(np.float32)
            for row, chunk_scores in enumerate(scores, n * _ROW_CHUNK):
                self._merge(row, chunk_scores, offset, items)
        kept = {int(i) for indices in self._indices for i in indices}
        self._items = {i: self._items[i] if i < offset else items[i - offset] for i in kept}

    def _prepared(self, queries: np.ndarray) -> list[np.ndarray]:
        if self._queries is None or self._queries[0] is not queries:
            blocks = [
                self._prepare(_as_float(queries[start : start + _ROW_CHUNK]))
                for start in range(0, len(queries), _ROW_CHUNK)
            ]
            self._queries = (queries, blocks)
        return self._queries[1]

    def _merge(self, row: int, chunk_scores: np.ndarray, offset: int, items: Sequence[Any]) -> None:
        indices = np.arange(offset, offset + len(chunk_scores))
        if self.threshold is not None:
            keep = chunk_scores >= self.threshold
            chunk_scores, indices = chunk_scores[keep], indices[keep]
        if self.k is not None and self.distinct is None and len(chunk_scores) > self.k:
            # Only a chunk score at least its k-th best can be among the best: the others
            # need no sorting (ties with it are all kept, so corpus order still decides).
            floor = np.partition(chunk_scores, len(chunk_scores) - self.k)[-self.k]
            if not np.isnan(floor):  # NaN sorts last: then every score is sorted
                keep = chunk_scores >= floor
                chunk_scores, indices = chunk_scores[keep], indices[keep]
        scores = np.concatenate([self._scores[row], chunk_scores])
        indices = np.concatenate([self._indices[row], indices])
        order = np.lexsort((indices, -scores))  # best score first, then corpus order
        if self.distinct is not None:
            order = self._first_of_each(order, indices, offset, items)
        if self.k is not None:
            order = order[: self.k]
        self._scores[row], self._indices[row] = scores[order], indices[order]

    def _first_of_each(
        self, order: np.ndarray, indices: np.ndarray, offset: int, items: Sequence[Any]
    ) -> np.ndarray:
        """``order`` with only the best row of each distinct key (up to ``k`` keys)."""
        assert self.distinct is not None
        seen: set[Hashable] = set()
        kept = []
        for position in order.tolist():
            i = int(indices[position])
            key = self.distinct(self._items[i] if i < offset else items[i - offset])
            if key not in seen:
                seen.add(key)
                kept.append(position)
                if self.k is not None and len(kept) == self.k:
                    break
        return np.asarray(kept, dtype=np.int64)

    def results(self) -> list[list[Hit]]:
        return [
            [
                Hit(rank, int(i), float(score), self._items.get(int(i)))
                for rank, (score, i) in enumerate(zip(scores, indices, strict=True), 1)
            ]
            for scores, indices in zip(self._scores, self._indices, strict=True)
        ]
