"""The filter rules as pure functions on arrays: no models, no files.

``active`` masks (bool, shape (N,)) mark the images a rule may reject; a rule never rejects outside it, and
statistics (means, rankings) are computed over active images only. NaN scores mean "cannot be scored": such
images are never rejected and never enter a statistic.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def zero_shot_margin(
    image_emb: np.ndarray, class_emb: np.ndarray, label_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CLIP zero-shot classification (paper appendix B (1)).

    Returns the predicted class index per image and the margin ``cos(image, own class) − max cos(image, other
    class)``: the prediction is the image's own label exactly when the margin is >= 0 (a tie counts for the
    label). With a single class there is nothing to confuse it with: margin NaN, prediction the label.
    """
    sims = np.asarray(image_emb, np.float64) @ np.asarray(class_emb, np.float64).T  # (N, C)
    rows = np.arange(sims.shape[0])
    own = sims[rows, label_index]
    if sims.shape[1] < 2:
        return label_index.copy(), np.full(sims.shape[0], np.nan)
    others = sims.copy()
    others[rows, label_index] = -np.inf
    margin = own - others.max(axis=1)
    predicted = np.where(margin >= 0, label_index, others.argmax(axis=1))
    return predicted, margin


def group_means(scores: np.ndarray, groups: Sequence[Hashable], active: np.ndarray) -> dict[Hashable, float]:
    """Mean score per group over active, scored images."""
    sums: dict[Hashable, list[float]] = {}
    for score, group, on in zip(scores, groups, active, strict=True):
        if on and np.isfinite(score):
            sums.setdefault(group, []).append(float(score))
    return {group: float(np.mean(values)) for group, values in sums.items()}


def below_group_mean(
    scores: np.ndarray, groups: Sequence[Hashable], active: np.ndarray
) -> tuple[np.ndarray, dict[Hashable, float]]:
    """Reject active images scoring strictly below their group's mean (paper appendix B (2) and (3)).

    Returns the reject mask and the threshold (the mean) of each group.
    """
    means = group_means(scores, groups, active)
    reject = np.array(
        [
            bool(on and np.isfinite(score) and score < means[group])
            for score, group, on in zip(scores, groups, active, strict=True)
        ],
        dtype=bool,
    )
    return reject, means


def below_threshold(scores: np.ndarray, threshold: float, active: np.ndarray) -> np.ndarray:
    """Reject active images scoring strictly below an absolute threshold (000's similarity threshold)."""
    with np.errstate(invalid="ignore"):
        return active & np.isfinite(scores) & (scores < threshold)


def rank_within_groups(scores: np.ndarray, groups: Sequence[Hashable | None], active: np.ndarray) -> np.ndarray:
    """1-based rank of each active, scored image among the active, scored images of its group (highest score
    first, ties broken by position so results are deterministic); 0 where there is no rank."""
    ranks = np.zeros(len(scores), dtype=np.int64)
    members: dict[Hashable, list[int]] = {}
    for i, (group, on) in enumerate(zip(groups, active, strict=True)):
        if on and group is not None and np.isfinite(scores[i]):
            members.setdefault(group, []).append(i)
    for indices in members.values():
        ordered = sorted(indices, key=lambda i: (-scores[i], i))
        for rank, i in enumerate(ordered, start=1):
            ranks[i] = rank
    return ranks


def outside_top_k(
    scores: np.ndarray, groups: Sequence[Hashable | None], active: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best-of-k (000): keep the ``keep`` best active images of each group, reject the others.

    Returns the reject mask and the ranks (see :func:`rank_within_groups`).
    """
    ranks = rank_within_groups(scores, groups, active)
    return ranks > keep, ranks


def top_class(probs: np.ndarray, label_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's predicted class (a tie with the label counts for the label) and its probability."""
    probs = np.asarray(probs, np.float64)
    rows = np.arange(probs.shape[0])
    top = probs.argmax(axis=1) if probs.size else np.zeros(0, np.int64)
    predicted = np.where(probs[rows, label_index] >= probs[rows, top], label_index, top)
    return predicted, probs[rows, predicted]


def confidently_other(
    predicted: np.ndarray, top_prob: np.ndarray, label_index: np.ndarray, threshold: float, active: np.ndarray
) -> np.ndarray:
    """Reject active images whose predicted class is not their label, with probability >= ``threshold``."""
    return active & (predicted != label_index) & (top_prob >= threshold)
