"""Augmentation-quality metrics (``sgid metrics``): similarity to the originals (paper §4.4, figure 3),
diversity, CLIP score, and FID / KID against the real data (004's per-class FID), overall and per class.

``frechet_distance(a, b)`` and ``kernel_distance(a, b)`` work on any two (N, D) feature arrays.
"""

from sgid.metrics.api import MetricsSummary, metrics_run
from sgid.metrics.compute import MetricsInput, compute_metrics
from sgid.metrics.distances import KernelDistance, frechet_distance, kernel_distance, kernel_distance_stats
from sgid.metrics.quality import clip_scores, mean_pairwise_distance

__all__ = [
    "KernelDistance",
    "MetricsInput",
    "MetricsSummary",
    "clip_scores",
    "compute_metrics",
    "frechet_distance",
    "kernel_distance",
    "kernel_distance_stats",
    "mean_pairwise_distance",
    "metrics_run",
]
