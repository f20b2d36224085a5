"""Image-level augmentation metrics as pure functions on embeddings.

* similarity (paper §4.4, figure 3): cosine between an original and each of its augmentations, averaged per
  original, then over the originals of a label (or of the whole dataset). Lower means more diversity, less
  semantic consistency.
* diversity: mean pairwise cosine *distance* (1 - cos) among the augmentations of one original, averaged over
  originals with at least two augmentations. 0 means identical augmentations.
* CLIP score: 100 * max(cos(image, prompt), 0), torchmetrics' ``CLIPScore`` convention (Hessel et al. 2021
  scale by 2.5 instead of 100), computed with our own CLIP scorer because torchmetrics' breaks with
  transformers 5.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from sgid.features import rowwise_cosine


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """100 * max(cos, 0) of ``image_emb[i]`` and ``text_emb[i]``."""
    return 100.0 * np.maximum(rowwise_cosine(image_emb, text_emb), 0.0)


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """Mean of 1 - cos over all unordered pairs of rows (NaN with fewer than two rows)."""
    x = np.asarray(embeddings, np.float64)
    if len(x) < 2:
        return float("nan")
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    upper = np.triu_indices(len(x), k=1)
    return float((1.0 - (x @ x.T)[upper]).mean())


def per_group_mean(values: np.ndarray, groups: Sequence[Hashable | None]) -> dict[Hashable, float]:
    """Mean of the finite values of each group (rows whose group is None are left out)."""
    members: dict[Hashable, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        if group is not None and np.isfinite(value):
            members.setdefault(group, []).append(float(value))
    return {group: float(np.mean(v)) for group, v in members.items()}


def per_group_diversity(embeddings: np.ndarray, groups: Sequence[Hashable | None]) -> dict[Hashable, float]:
    """:func:`mean_pairwise_distance` of the rows of each group with at least two rows."""
    members: dict[Hashable, list[int]] = {}
    for i, group in enumerate(groups):
        if group is not None and np.isfinite(embeddings[i]).all():
            members.setdefault(group, []).append(i)
    return {group: mean_pairwise_distance(embeddings[rows]) for group, rows in members.items() if len(rows) > 1}


def summary(values: Sequence[float] | np.ndarray) -> dict[str, Any] | None:
    """Mean, standard deviation and count of the finite values; None when there are none."""
    finite = np.asarray([v for v in np.asarray(values, np.float64) if np.isfinite(v)])
    if finite.size == 0:
        return None
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}
