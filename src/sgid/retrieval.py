"""Nearest-neighbour retrieval from an unlabelled pool (``seeds/001``: retrieval beat generation on 10% ImageNet).

Pure functions over unit-norm CLIP embeddings, indexed with faiss (exact inner product):

* :func:`near_duplicates` flags pool images too similar to any training image (cosine >= threshold);
* :func:`assign` gives every request (one per augmentation to make) its own pool image: candidates are each
  query's nearest neighbours, and pairs are taken globally from the highest similarity down, so no pool image
  is used twice and the result does not depend on the order of the queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sgid.errors import require


@dataclass(frozen=True)
class Query:
    """``count`` pool images wanted for ``key``, ranked by inner product with ``vector``."""

    key: str
    vector: np.ndarray
    count: int


@dataclass(frozen=True)
class Match:
    pool_index: int
    score: float
    rank: int  # 0 for the query's best assigned image, 1 for the next, ...


def _index(vectors: np.ndarray):
    faiss = require("faiss", "retrieval")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices) of each query's ``k`` highest inner products in ``base`` (-1 where base is shorter)."""
    if len(base) == 0 or len(queries) == 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    return _index(base).search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(base)))


def near_duplicates(pool: np.ndarray, train: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pool image: whether its nearest training image has cosine >= threshold, that neighbour, the cosine."""
    scores, indices = search(train, pool, 1)
    if scores.shape[1] == 0:
        return np.zeros(len(pool), bool), np.full(len(pool), -1), np.full(len(pool), np.nan)
    return scores[:, 0] >= threshold, indices[:, 0], scores[:, 0]


def assign(
    queries: Sequence[Query], pool: np.ndarray, excluded: np.ndarray, headroom: int = 4
) -> dict[str, list[Match]]:
    """Give each query up to ``count`` distinct pool images, best pairs first, never one image twice.

    Each query considers its ``headroom * count + 16`` nearest candidates (all of the pool when smaller).
    """
    if not queries:
        return {}
    vectors = np.stack([q.vector for q in queries]).astype(np.float32)
    width = max(headroom * max(q.count for q in queries) + 16, 1)
    scores, indices = search(pool, vectors, width)
    pairs = [
        (float(scores[qi, j]), qi, int(indices[qi, j]))
        for qi in range(len(queries))
        for j in range(scores.shape[1])
        if indices[qi, j] >= 0 and not excluded[indices[qi, j]]
    ]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))  # deterministic: score, then query order, then pool order
    taken: set[int] = set()
    result: dict[str, list[Match]] = {q.key: [] for q in queries}
    for score, qi, pool_index in pairs:
        query = queries[qi]
        matches = result[query.key]
        if pool_index in taken or len(matches) >= query.count:
            continue
        taken.add(pool_index)
        matches.append(Match(pool_index, score, len(matches)))
    return result
