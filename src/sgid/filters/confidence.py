"""``confidence``: a classifier trained on the real data (``sgid evaluate --save-models``) judges each
generated image; reject the images it confidently assigns to another class (top class not the label, with
probability >= ``--confidence-threshold``). Score: the probability of the image's own label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sgid.errors import SgidError, need
from sgid.filters.base import (
    FILTERS,
    Filter,
    FilterInput,
    FilterModels,
    FilterOptions,
    PredictProba,
    Scores,
    Verdict,
)
from sgid.filters.rules import confidently_other, top_class
from sgid.images import ImageError, load_rgb


@FILTERS.register("confidence")
class ConfidenceFilter(Filter):
    name = "confidence"
    options_read = frozenset({"classifier", "confidence_threshold"})
    help = "reject images a classifier trained on the real data (--classifier) confidently puts in another class"

    def __init__(
        self,
        predict_proba: PredictProba,
        classes: Sequence[str],
        threshold: float = 0.5,
        batch_size: int = 32,
    ) -> None:
        self.predict_proba = predict_proba
        self.classes = list(classes)
        self.threshold = threshold
        self.batch_size = batch_size

    @classmethod
    def check_options(cls, options: FilterOptions) -> None:
        if options.classifier is None:
            raise SgidError(
                "the confidence filter needs --classifier DIR: a classifier trained on the real data "
                "and saved by sgid evaluate --save-models"
            )
        if not options.classifier.is_dir():
            raise SgidError(f"--classifier {options.classifier} is not a folder")
        if not 0.0 < options.confidence_threshold <= 1.0:
            raise SgidError(f"--confidence-threshold {options.confidence_threshold} is not a probability in (0, 1]")

    @classmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> ConfidenceFilter:
        predict, classes = models.classifier(need(options.classifier, "the confidence filter needs --classifier DIR"))
        return cls(predict, classes, options.confidence_threshold)

    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        label_index = self._label_index(data)
        probs = self._probabilities(data)
        predicted, top = top_class(probs, label_index)
        own = probs[np.arange(len(data)), label_index] if len(data) else np.zeros(0)
        return Scores(
            own,
            extra={
                "confidence_predicted": [self.classes[i] for i in predicted],
                "confidence_predicted_p": [float(p) for p in top],
            },
        )

    def _label_index(self, data: FilterInput) -> np.ndarray:
        position = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({e.label for e in data.generated} - set(position))
        if unknown:
            raise SgidError(
                f"the --classifier was trained on {len(self.classes)} classes without "
                f"{', '.join(unknown[:5])}: train it on this dataset's real images"
            )
        return np.array([position[e.label] for e in data.generated], dtype=np.int64)

    def _probabilities(self, data: FilterInput) -> np.ndarray:
        parts = []
        for start in range(0, len(data), self.batch_size):
            images = []
            for entry in data.generated[start : start + self.batch_size]:
                try:
                    images.append(load_rgb(entry.path).image)
                except ImageError as exc:
                    raise SgidError(f"cannot read image {entry.path}: {exc}") from None
            probs = np.asarray(self.predict_proba(images), np.float64)
            if probs.shape != (len(images), len(self.classes)):
                raise SgidError(
                    f"the classifier returned probabilities of shape {probs.shape}, expected "
                    f"({len(images)}, {len(self.classes)})"
                )
            parts.append(probs)
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)))

    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        position = {c: i for i, c in enumerate(self.classes)}
        names = scores.extra["confidence_predicted"]
        top = np.array(scores.extra["confidence_predicted_p"], dtype=np.float64)
        predicted = np.array([position[name] for name in names], dtype=np.int64)
        reject = confidently_other(predicted, top, self._label_index(data), self.threshold, active)
        return Verdict.explained(
            reject,
            data,
            lambda i, e: (
                f"confidence: the real-data classifier says {names[i]!r} "
                f"(p={top[i]:.4f} >= {self.threshold}), not {e.label!r}"
            ),
            {"threshold": self.threshold},
        )
