"""Similarity scores and rankings from embeddings.

Scores come from sentence-transformers' own similarity functions, so they equal
``model.similarity`` exactly. Results are plain data (:class:`Hit`, numpy arrays).

>>> hits = top_k(np.eye(2, dtype="float32")[:1], np.eye(2, dtype="float32"), "cosine", k=1)
>>> hits[0][0].index, round(hits[0][0].score, 3)
(0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("cosine", "dot", "euclidean", "manhattan")

# Rows of the score matrix computed at once when ranking: bounds memory for big
# query sets against big corpora (rows × corpus × 4 bytes).
_ROW_CHUNK = 256


@dataclass(frozen=True)
class Hit:
    """One ranked result: the corpus row ``index`` scored ``score`` (1-based ``rank``)."""

    rank: int
    index: int
    score: float


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
    """For each query, the ``k`` best corpus rows (all when ``k`` is None), best first.

    Ties keep corpus order, so results are stable from run to run.
    """
    import torch

    full, _ = _functions(metric)
    corpus_t = torch.from_numpy(_as_float(corpus))
    results: list[list[Hit]] = []
    for start in range(0, len(queries), _ROW_CHUNK):
        scores = full(torch.from_numpy(_as_float(queries[start : start + _ROW_CHUNK])), corpus_t)
        for row in scores.cpu().numpy():
            order = np.argsort(-row, kind="stable")
            if k is not None:
                order = order[:k]
            kept = [i for i in order if threshold is None or row[i] >= threshold]
            results.append([Hit(r, int(i), float(row[i])) for r, i in enumerate(kept, 1)])
    return results
