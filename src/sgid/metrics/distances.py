"""FID and KID between two sets of image features, computed by torchmetrics.

torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance`` take a pluggable feature extractor
(``feature=<nn.Module>``). Features here are extracted once (by any :mod:`sgid.features` extractor) and
cached, so the module handed to torchmetrics is :class:`PrecomputedFeatures`, the identity: the metrics
accumulate exactly the arrays given, in float64.

* FID (Heusel et al. 2017): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), covariances with n - 1.
  With fewer images than feature dimensions the covariances are rank-deficient and FID is biased upwards:
  compare FIDs only between sets of equal size and the same extractor.
* KID (Bińkowski et al. 2018): the unbiased estimate of MMD^2 with the polynomial kernel
  k(x, y) = (gamma x.y + coef)^degree, gamma = 1/D by default, averaged over random subsets of equal size
  (torchmetrics' definition). When both sets have the same size and it is at most ``subset_size``, the
  whole sets are used once and the value is exact.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sgid.errors import SgidError


class PrecomputedFeatures(torch.nn.Module):
    """The feature extractor handed to torchmetrics for features that are already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _pair(a: np.ndarray, b: np.ndarray, minimum: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise SgidError(f"features must be two (N, D) arrays with the same D, got {x.shape} and {y.shape}")
    if len(x) < minimum or len(y) < minimum:
        raise SgidError(f"needs at least {minimum} feature vectors on each side, got {len(x)} and {len(y)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SgidError("features contain NaN or infinite values")
    return torch.from_numpy(x), torch.from_numpy(y)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets ``a`` (N, D) and ``b`` (M, D); N, M >= 2."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, y = _pair(a, b, 2)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(x.shape[1]))
    metric.update(x, real=True)
    metric.update(y, real=False)
    return max(float(metric.compute()), 0.0)  # exact math is >= 0; round-off can dip below


@dataclass(frozen=True)
class KernelDistance:
    mean: float  # KID: mean of the subset estimates of MMD^2
    std: float  # their standard deviation (0 when the whole sets were used)
    subsets: int
    subset_size: int


def kernel_distance_stats(
    a: np.ndarray,
    b: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> KernelDistance:
    """KID between ``a`` and ``b`` with its spread over subsets; seeded, so repeatable."""
    from torchmetrics.image.kid import KernelInceptionDistance

    x, y = _pair(a, b, 2)
    size = min(subset_size, len(x), len(y))
    if len(x) == len(y) == size:
        subsets = 1  # every subset would be the whole set
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(x.shape[1]),
            subsets=subsets,
            subset_size=size,
            degree=degree,
            gamma=None if gamma is None else float(gamma),
            coef=float(coef),
        )
    metric.update(x, real=True)
    metric.update(y, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return KernelDistance(float(mean), float(std), subsets, size)


def kernel_distance(a: np.ndarray, b: np.ndarray, **options: Any) -> float:
    """KID between feature sets ``a`` (N, D) and ``b`` (M, D); ``options`` and the rest: see
    :func:`kernel_distance_stats`."""
    return kernel_distance_stats(a, b, **options).mean
