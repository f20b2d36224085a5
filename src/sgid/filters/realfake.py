"""``realfake``: a classifier learns real vs generated; keep the generated images it takes for real (000).

The classifier is a logistic regression on CLIP image features (standardised; classes weighted so that the
0.5 decision point means equal priors however many images each side has). Each image is scored
*out of fold*: the real and generated images are split into ``--folds`` folds by source (a real image, its
augmentations and their siblings always share a fold), and an image's P(real) comes from the model trained on
the other folds. No image is judged by a model that saw it, its source or its siblings.

Only real images and generated images still in play are trained on; every generated image is scored. The
out-of-fold ROC AUC over the training images goes into the report: 0.5 means the classifier cannot tell
generated images from real ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sgid.errors import SgidError
from sgid.features import ImageEmbedder
from sgid.filters.base import FILTERS, Filter, FilterInput, FilterModels, FilterOptions, Scores, Verdict


class Classifier(Protocol):
    def fit(self, x: np.ndarray, y: np.ndarray) -> Any: ...

    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...


def logistic_regression() -> Classifier:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))


@dataclass(frozen=True)
class OutOfFold:
    probability: np.ndarray  # (N,) P(real) from the model of the image's fold
    fold: np.ndarray  # (N,) the fold each image was scored in
    trained_on: list[np.ndarray]  # per fold, the indices its model was trained on


def out_of_fold_real_probability(
    features: np.ndarray,
    is_real: np.ndarray,
    groups: Sequence[str],
    trainable: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    make_classifier: Callable[[], Classifier] = logistic_regression,
) -> OutOfFold:
    """P(real) for every row, each from a classifier trained on other folds' ``trainable`` rows only.

    Folds are grouped by ``groups`` (rows of one group share a fold) and stratified by real / trainable
    generated / other generated, so every fold's training set gets its share of each.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(is_real, dtype=np.int64)
    n_groups = len(set(groups))
    n_folds = min(folds, n_groups)
    if n_folds < 2 or labels[trainable].min(initial=1) == labels[trainable].max(initial=0):
        raise SgidError("realfake needs real and generated images from at least 2 sources to cross-validate")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    probability = np.full(len(labels), np.nan)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    trained_on: list[np.ndarray] = []
    strata = np.where(labels == 1, 0, np.where(trainable, 1, 2))
    with warnings.catch_warnings():  # a stratum smaller than the fold count is expected (few rejected images)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(features, strata, groups=list(groups)))
    for fold, (train, test) in enumerate(splits):
        train = train[trainable[train]]
        if len(set(labels[train].tolist())) < 2:
            side = "real" if labels[train].all() else "generated"
            raise SgidError(
                f"realfake: a fold has only {side} images to train on; use fewer --folds (now "
                f"{n_folds}) or run realfake earlier in --filters, before others remove images"
            )
        classifier = make_classifier()
        classifier.fit(features[train], labels[train])
        probability[test] = classifier.predict_proba(features[test])[:, 1]
        fold_of[test] = fold
        trained_on.append(train)
    return OutOfFold(probability, fold_of, trained_on)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (None when one side is empty)."""
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive.astype(int), scores))


@FILTERS.register("realfake")
class RealFakeFilter(Filter):
    name = "realfake"
    options_read = frozenset({"folds", "real_threshold", "seed"})
    help = "out-of-fold real-vs-generated logistic regression on CLIP features; keep images taken for real (000)"
    reads = frozenset({"real"})

    def __init__(
        self,
        images: ImageEmbedder,
        *,
        folds: int = 5,
        threshold: float = 0.5,
        seed: int = 0,
        make_classifier: Callable[[], Classifier] = logistic_regression,
    ) -> None:
        self.images = images
        self.folds = folds
        self.threshold = threshold
        self.seed = seed
        self.make_classifier = make_classifier

    @classmethod
    def check_options(cls, options: FilterOptions) -> None:
        if options.folds < 2:
            raise SgidError(f"--folds {options.folds}: out-of-fold scoring needs at least 2 folds")
        if not 0.0 <= options.real_threshold <= 1.0:
            raise SgidError(f"--real-threshold {options.real_threshold} is not a probability in [0, 1]")

    @classmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> RealFakeFilter:
        return cls(models.images, folds=options.folds, threshold=options.real_threshold, seed=options.seed)

    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        if not data.real:
            raise SgidError("realfake needs the real images, and the run's input folder has none")
        n_real = len(data.real)
        features = np.concatenate(
            [
                self.images([source.path for source in data.real]),
                self.images([e.path for e in data.generated]),
            ]
        )
        is_real = np.arange(len(features)) < n_real
        groups = [source.relpath for source in data.real] + [e.source or e.file_name for e in data.generated]
        trainable = np.concatenate([np.ones(n_real, dtype=bool), active])
        result = out_of_fold_real_probability(
            features,
            is_real,
            groups,
            trainable,
            folds=self.folds,
            seed=self.seed,
            make_classifier=self.make_classifier,
        )
        auc = roc_auc(result.probability[trainable], is_real[trainable])
        return Scores(
            result.probability[n_real:],
            summary={
                "folds": len(result.trained_on),
                "real_images": n_real,
                "out_of_fold_auc": auc,
                "mean_p_real_of_real": float(result.probability[:n_real].mean()),
            },
        )

    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        return Verdict.below_threshold("realfake", "out-of-fold P(real)", scores, self.threshold, active)
