"""FID and KID against independent computations, and the image-level metrics on constructed embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from sgid.errors import SgidError
from sgid.metrics import (
    MetricsInput,
    clip_scores,
    compute_metrics,
    frechet_distance,
    kernel_distance,
    kernel_distance_stats,
    mean_pairwise_distance,
)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID written out with scipy's matrix square root (Heusel et al. 2017)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def unbiased_mmd2(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> float:
    """Unbiased MMD^2 with k(u, v) = (gamma u.v + coef)^degree, by explicit loops over pairs (Bińkowski et al.
    2018, eq. 3), written without reference to the implementation under test."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return float((gamma * u @ v + coef) ** degree)

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("seed, n, m, dim", [(0, 300, 200, 8), (1, 120, 150, 16), (2, 64, 64, 4)])
def test_frechet_distance_agrees_with_scipy_sqrtm(seed: int, n: int, m: int, dim: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim))
    b = rng.normal(0.3, 1.5, size=(m, dim)) @ rng.normal(size=(dim, dim)) * 0.5
    assert frechet_distance(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-6, abs=1e-8)
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    a = np.random.default_rng(3).normal(size=(100, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed, degree, gamma, coef", [(0, 3, None, 1.0), (1, 2, 0.5, 0.5), (2, 3, 0.1, 2.0)])
def test_kernel_distance_agrees_with_an_independent_unbiased_mmd(
    seed: int, degree: int, gamma: float | None, coef: float
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 5))
    y = rng.normal(0.4, 1.2, size=(40, 5))
    expected = unbiased_mmd2(x, y, degree, gamma, coef)
    stats = kernel_distance_stats(x, y, degree=degree, gamma=gamma, coef=coef)
    assert stats.mean == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert (stats.subsets, stats.subset_size, stats.std) == (1, 40, 0.0)  # equal sizes: the whole sets, once
    assert kernel_distance(x, y, degree=degree, gamma=gamma, coef=coef) == pytest.approx(expected, rel=1e-9)


def test_kernel_distance_over_subsets_is_repeatable_and_near_the_full_estimate() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 5))
    y = rng.normal(0.5, 1.0, size=(45, 5))
    stats = kernel_distance_stats(x, y, subsets=200)
    assert stats.subset_size == 45 and stats.subsets == 200
    assert kernel_distance_stats(x, y, subsets=200) == stats  # seeded
    assert stats.mean == pytest.approx(unbiased_mmd2(x, y), rel=0.1)
    one, other = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))  # one distribution: KID near 0
    assert abs(kernel_distance(one, other)) < stats.mean / 5


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), "same D"),
        (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2"),
        (np.full((3, 3), np.nan), np.zeros((3, 3)), "NaN"),
    ],
)
def test_distances_refuse_bad_features(a: np.ndarray, b: np.ndarray, message: str) -> None:
    with pytest.raises(SgidError, match=message):
        frechet_distance(a, b)
    with pytest.raises(SgidError, match=message):
        kernel_distance(a, b)


def test_clip_score_is_100_times_the_cosine_clipped_at_zero() -> None:
    images = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    texts = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(clip_scores(images, texts), [100.0, 60.0, 0.0])


def test_mean_pairwise_distance_over_unordered_pairs() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # distances 1, 2, 1
    assert mean_pairwise_distance(x) == pytest.approx(4 / 3)
    assert np.isnan(mean_pairwise_distance(x[:1]))


def test_similarity_is_averaged_per_original_then_per_label_like_the_paper() -> None:
    cos = [
        0.9,
        0.7,
        0.5,
        0.2,
        0.4,
        np.nan,
    ]  # cat: source a has 3 augmentations, b has 1; dog: c has 1, d none
    data = MetricsInput(
        labels=["cat", "cat", "cat", "cat", "dog", "dog"],
        sources=["a", "a", "a", "b", "c", None],
        similarity=np.array(cos),
        clip_score=np.array([10.0, 20.0, np.nan, 30.0, 40.0, 50.0]),
        clip_embeddings=np.array([[1, 0], [0, 1], [1, 0], [1, 1], [1, 0], [0, 1]], dtype=float),
        features=np.random.default_rng(0).normal(size=(6, 3)),
        reference=np.random.default_rng(1).normal(size=(5, 3)),
        reference_labels=["cat", "cat", "cat", "dog", "dog"],
    )
    result = compute_metrics(data)
    cat, dog = result["per_class"]["cat"], result["per_class"]["dog"]
    assert cat["similarity"]["mean"] == pytest.approx((0.7 + 0.2) / 2)  # not the pooled (0.9+0.7+0.5+0.2)/4
    assert cat["similarity"]["n"] == 2 and cat["sources"] == 2
    assert dog["similarity"] == {"mean": pytest.approx(0.4), "std": 0.0, "n": 1}
    assert result["overall"]["similarity"]["mean"] == pytest.approx((0.7 + 0.2 + 0.4) / 3)
    assert cat["diversity"]["mean"] == pytest.approx(mean_pairwise_distance(data.clip_embeddings[:3]))
    assert dog["diversity"] is None  # no original with two augmentations
    assert cat["clip_score"]["mean"] == pytest.approx(20.0) and cat["clip_score"]["n"] == 3
    assert cat["fid"] == pytest.approx(frechet_distance(data.reference[:3], data.features[:4]))
    assert dog["fid"] == pytest.approx(frechet_distance(data.reference[3:], data.features[4:]))
    assert cat["kid"]["mean"] == pytest.approx(kernel_distance(data.reference[:3], data.features[:4]))
    assert any("fewer images than feature dimensions" in note for note in cat["notes"])


def test_fid_is_left_out_for_a_class_with_a_single_image() -> None:
    data = MetricsInput(
        ["cat", "dog", "dog"],
        ["a", "b", "c"],
        np.ones(3),
        np.ones(3),
        np.eye(3),
        np.eye(3),
        np.eye(3),
        ["cat", "dog", "dog"],
    )
    cat = compute_metrics(data)["per_class"]["cat"]
    assert cat["fid"] is None and cat["kid"] is None
    assert "need at least 2 generated and 2 reference images (1 and 1)" in cat["notes"][0]
