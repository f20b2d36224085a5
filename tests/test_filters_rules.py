"""The filter rules as pure functions, on exact numbers."""

from __future__ import annotations

import numpy as np
import pytest

from sgid.features import rowwise_cosine
from sgid.filters.rules import (
    below_group_mean,
    below_threshold,
    confidently_other,
    outside_top_k,
    top_class,
    zero_shot_margin,
)

ALL = np.ones(6, dtype=bool)


def test_zero_shot_margin_predicts_the_closest_class_and_a_tie_counts_for_the_label() -> None:
    classes = np.eye(3)  # class c's text embedding is e_c
    images = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    labels = np.array([0, 0, 1, 2])
    predicted, margin = zero_shot_margin(images, classes, labels)
    assert predicted.tolist() == [0, 1, 1, 2]
    np.testing.assert_allclose(margin, [0.8, -0.8, 0.0, 0.6])


def test_zero_shot_with_one_class_cannot_be_wrong() -> None:
    predicted, margin = zero_shot_margin(np.ones((2, 3)), np.ones((1, 3)), np.zeros(2, dtype=np.int64))
    assert predicted.tolist() == [0, 0] and np.isnan(margin).all()


def test_per_label_mean_rejects_exactly_the_images_below_their_labels_mean() -> None:
    scores = np.array([0.25, 0.5, 0.75, 1.0, 0.5, 0.75])  # exact in binary: means 0.5 and 0.75
    labels = ["a", "a", "a", "b", "b", "b"]
    reject, means = below_group_mean(scores, labels, ALL)
    assert means == {"a": 0.5, "b": 0.75}
    assert reject.tolist() == [True, False, False, False, True, False]  # equal to the mean is kept


def test_per_label_mean_counts_only_active_scored_images() -> None:
    scores = np.array([0.1, 0.2, 0.3, np.nan, 0.5, 0.7])
    active = np.array([False, True, True, True, True, True])
    reject, means = below_group_mean(scores, ["a", "a", "a", "b", "b", "b"], active)
    assert means == pytest.approx({"a": 0.25, "b": 0.6})
    assert reject.tolist() == [False, True, False, False, True, False]  # inactive and NaN are never rejected


def test_threshold_is_strict_and_ignores_inactive_and_unscored() -> None:
    scores = np.array([0.5, 0.8, 0.79, np.nan, 0.1, 0.9])
    active = np.array([True, True, True, True, False, True])
    assert below_threshold(scores, 0.8, active).tolist() == [True, False, True, False, False, False]


@pytest.mark.parametrize("threshold", [-0.3, 0.0, 0.27, 0.8])
def test_threshold_rejects_just_below_and_keeps_the_threshold_itself(threshold: float) -> None:
    scores = np.array([threshold - 1e-9, threshold, threshold + 1e-9])
    assert below_threshold(scores, threshold, np.ones(3, dtype=bool)).tolist() == [True, False, False]


def test_per_label_mean_rejects_just_below_the_mean() -> None:
    scores = np.array([0.3 - 1e-9, 0.3 + 1e-9, 0.6 - 1e-9, 0.6 + 1e-9])
    reject, means = below_group_mean(scores, ["a", "a", "b", "b"], np.ones(4, dtype=bool))
    assert means == pytest.approx({"a": 0.3, "b": 0.6}, abs=1e-15)
    assert reject.tolist() == [True, False, True, False]


def test_best_of_k_keeps_the_top_of_each_group_and_breaks_ties_by_position() -> None:
    scores = np.array([0.3, 0.9, 0.5, 0.4, 0.4, 0.1])
    groups = ["s1", "s1", "s1", "s2", "s2", None]
    reject, ranks = outside_top_k(scores, groups, ALL, keep=1)
    assert ranks.tolist() == [3, 1, 2, 1, 2, 0]
    assert reject.tolist() == [True, False, True, False, True, False]
    reject2, _ = outside_top_k(scores, groups, ALL, keep=2)
    assert reject2.tolist() == [True, False, False, False, False, False]


def test_best_of_k_ranks_only_active_images() -> None:
    scores = np.array([0.3, 0.9, 0.5])
    reject, ranks = outside_top_k(scores, ["s", "s", "s"], np.array([True, False, True]), keep=1)
    assert ranks.tolist() == [2, 0, 1] and reject.tolist() == [True, False, False]


def test_confidence_rejects_only_confident_predictions_of_another_class() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.5, 0.5], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 0, 1])
    predicted, top = top_class(probs, labels)
    assert predicted.tolist() == [0, 1, 1, 0, 1]  # a tie counts for the label
    np.testing.assert_allclose(top, [0.9, 0.8, 0.55, 0.5, 0.9])
    reject = confidently_other(predicted, top, labels, 0.6, np.ones(5, dtype=bool))
    assert reject.tolist() == [False, True, False, False, False]


def test_confidence_threshold_itself_rejects_and_just_below_keeps() -> None:
    probs = np.array([[0.3, 0.7], [0.3 + 1e-9, 0.7 - 1e-9], [0.3 - 1e-9, 0.7 + 1e-9]])
    labels = np.zeros(3, dtype=np.int64)
    predicted, top = top_class(probs, labels)
    reject = confidently_other(predicted, top, labels, 0.7, np.ones(3, dtype=bool))
    assert reject.tolist() == [True, False, True]


def test_rowwise_cosine_is_nan_for_missing_rows() -> None:
    a = np.array([[1.0, 0.0], [np.nan, np.nan], [3.0, 4.0]])
    b = np.array([[0.0, 2.0], [1.0, 0.0], [3.0, 4.0]])
    result = rowwise_cosine(a, b)
    assert result[0] == pytest.approx(0.0) and np.isnan(result[1]) and result[2] == pytest.approx(1.0)
