"""All metrics, overall and per class, from embeddings already computed (no models, no files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgid.metrics.distances import frechet_distance, kernel_distance_stats
from sgid.metrics.quality import per_group_diversity, per_group_mean, summary

#: what each number means, copied into metrics.json
DEFINITIONS = {
    "similarity": "CLIP cosine similarity between an original and its augmentations, averaged per original, "
    "then over originals (paper §4.4, figure 3); lower = more diverse, less consistent",
    "diversity": "mean pairwise CLIP cosine distance (1 - cos) among the augmentations of one original, "
    "averaged over originals with >= 2 augmentations",
    "clip_score": "100 * max(cos(CLIP image, CLIP prompt), 0) per generated image (torchmetrics' CLIPScore scale)",
    "fid": "Frechet distance between reference and generated features (lower = closer to the real data)",
    "kid": "unbiased MMD^2, cubic polynomial kernel, mean (std) over equal-size subsets (lower = closer)",
}


@dataclass(frozen=True)
class MetricsInput:
    """Per generated image (N rows) and per reference image (M rows)."""

    labels: Sequence[str]  # (N) class of each generated image
    sources: Sequence[str | None]  # (N) its source image, None without one
    similarity: np.ndarray  # (N,) CLIP cosine to its source, NaN without one
    clip_score: np.ndarray  # (N,) NaN without a prompt
    clip_embeddings: np.ndarray  # (N, D) CLIP image embeddings (diversity)
    features: np.ndarray  # (N, F) FID/KID features
    reference: np.ndarray  # (M, F) FID/KID features of the real images
    reference_labels: Sequence[str]  # (M) their classes


def compute_metrics(
    data: MetricsInput, *, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """``{"overall": {...}, "per_class": {label: {...}}}``: the same metrics for all images and per class."""
    labels = np.array(data.labels, dtype=object)
    reference_labels = np.array(data.reference_labels, dtype=object)
    classes = sorted(set(labels.tolist()) | set(reference_labels.tolist()))

    def group(generated: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        return group_metrics(
            data, generated, reference, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed
        )

    return {
        "overall": group(np.ones(len(labels), bool), np.ones(len(reference_labels), bool)),
        "per_class": {c: group(labels == c, reference_labels == c) for c in classes},
    }


def group_metrics(
    data: MetricsInput,
    generated: np.ndarray,
    reference: np.ndarray,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of the generated rows ``generated`` (bool mask) against the reference rows ``reference``."""
    rows = np.flatnonzero(generated)
    sources = [data.sources[int(i)] for i in rows]
    n, m = len(rows), int(reference.sum())
    result: dict[str, Any] = {
        "generated": n,
        "reference": m,
        "sources": len({s for s in sources if s is not None}),
        "similarity": summary(list(per_group_mean(data.similarity[rows], sources).values())),
        "diversity": summary(list(per_group_diversity(data.clip_embeddings[rows], sources).values())),
        "clip_score": summary(data.clip_score[rows]),
        "fid": None,
        "kid": None,
        "notes": [],
    }
    if n < 2 or m < 2:
        result["notes"].append(f"FID and KID need at least 2 generated and 2 reference images ({n} and {m})")
        return result
    gen, ref = data.features[rows], data.reference[reference]
    result["fid"] = frechet_distance(ref, gen)
    kid = kernel_distance_stats(ref, gen, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    result["kid"] = {"mean": kid.mean, "std": kid.std, "subsets": kid.subsets, "subset_size": kid.subset_size}
    if min(n, m) <= gen.shape[1]:
        result["notes"].append(
            f"fewer images than feature dimensions ({min(n, m)} <= {gen.shape[1]}): FID is "
            f"biased upwards; compare FIDs only at equal sizes"
        )
    return result
