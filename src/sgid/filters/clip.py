"""The CLIP filters: the paper's three (appendix B, table 7) and the replication report's threshold (000).

* ``label``: zero-shot over "a photo of a {label}" for every class; reject when the prediction is another
  class. Score: the zero-shot margin (see :func:`~sgid.filters.rules.zero_shot_margin`).
* ``prompt``: cosine(image, the prompt that generated it); reject below that label's mean.
* ``original``: cosine(image, its source image); reject below that label's mean.
* ``threshold``: cosine(image, its source image); reject below ``--threshold``.

Similarities are cosines of unit-norm CLIP embeddings, the paper's s (§3.1).
"""

from __future__ import annotations

import numpy as np

from sgid.errors import SgidError, need
from sgid.features import ImageEmbedder, TextEmbedder, rowwise_cosine
from sgid.filters.base import FILTERS, Filter, FilterInput, FilterModels, FilterOptions, Scores, Verdict
from sgid.filters.rules import below_group_mean, zero_shot_margin


@FILTERS.register("label")
class LabelFilter(Filter):
    name = "label"
    options_read = frozenset({"label_template"})
    help = "CLIP zero-shot over 'a photo of a {label}' for every class; reject another class (paper app. B (1))"

    def __init__(self, images: ImageEmbedder, texts: TextEmbedder, template: str = "a photo of a {label}") -> None:
        self.images = images
        self.texts = texts
        self.template = template

    @classmethod
    def check_options(cls, options: FilterOptions) -> None:
        if "{label}" not in options.label_template:
            raise SgidError(f"--label-template {options.label_template!r} must contain {{label}}")

    @classmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> LabelFilter:
        return cls(models.images, models.texts, options.label_template)

    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        classes = list(data.classes)
        prompts = [
            self.template.replace("{label}", data.classes[c]) for c in classes
        ]  # as augment reads it: no str.format
        position = {c: i for i, c in enumerate(classes)}
        label_index = np.array([position[e.label] for e in data.generated], dtype=np.int64)
        predicted, margin = zero_shot_margin(
            self.images([e.path for e in data.generated]), self.texts(prompts), label_index
        )
        return Scores(
            margin,
            missing="only one class" if len(classes) < 2 else None,
            extra={"label_predicted": [classes[i] for i in predicted]},
            summary={"prompts": dict(zip(classes, prompts, strict=True))},
        )

    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        predicted = scores.extra["label_predicted"]
        with np.errstate(invalid="ignore"):
            reject = active & (scores.values < 0)
        return Verdict.explained(
            reject,
            data,
            lambda i, e: (
                f"label: CLIP zero-shot predicts {predicted[i]!r}, not {e.label!r} (margin {scores.values[i]:.4f})"
            ),
        )


@FILTERS.register("prompt")
class PromptFilter(Filter):
    name = "prompt"
    help = "CLIP similarity of image and its prompt; reject below the label's mean (paper app. B (2))"

    def __init__(self, images: ImageEmbedder, texts: TextEmbedder) -> None:
        self.images = images
        self.texts = texts

    @classmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> PromptFilter:
        return cls(models.images, models.texts)

    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        values = np.full(len(data), np.nan)
        with_prompt = [i for i, e in enumerate(data.generated) if e.prompt]
        if with_prompt:
            images = self.images([data.generated[i].path for i in with_prompt])
            texts = self.texts([data.generated[i].prompt or "" for i in with_prompt])
            values[with_prompt] = rowwise_cosine(images, texts)
        return Scores(values, missing="no prompt")

    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        return _below_label_mean(self.name, "image-prompt similarity", data, scores, active)


def source_similarity(images: ImageEmbedder, data: FilterInput) -> Scores:
    """cosine(generated image, its source image) per image; NaN for images without a source."""
    values = np.full(len(data), np.nan)
    with_source = [i for i, e in enumerate(data.generated) if e.source_path is not None]
    if with_source:
        generated = images([data.generated[i].path for i in with_source])
        sources = images([data.generated[i].source_path for i in with_source])  # type: ignore[misc]
        values[with_source] = rowwise_cosine(generated, sources)
    return Scores(values, missing="no source image")


@FILTERS.register("original")
class OriginalFilter(Filter):
    name = "original"
    help = "CLIP similarity to the source image; reject below the label's mean (paper app. B (3))"
    reads = frozenset({"sources"})

    def __init__(self, images: ImageEmbedder) -> None:
        self.images = images

    @classmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> OriginalFilter:
        return cls(models.images)

    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        return source_similarity(self.images, data)

    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        return _below_label_mean(self.name, "similarity to the source", data, scores, active)


@FILTERS.register("threshold")
class ThresholdFilter(Filter):
    name = "threshold"
    options_read = frozenset({"threshold"})
    help = "CLIP similarity to the source image; reject below --threshold (000)"
    reads = frozenset({"sources"})

    def __init__(self, images: ImageEmbedder, threshold: float) -> None:
        self.images = images
        self.threshold = threshold

    @classmethod
    def check_options(cls, options: FilterOptions) -> None:
        if options.threshold is None:
            raise SgidError(
                "the threshold filter needs --threshold T: the lowest cosine similarity to the source "
                "image to keep, in [-1, 1] (SGID's CIFAR-10 average is 0.85, paper figure 3)"
            )
        if not -1.0 <= options.threshold <= 1.0:
            raise SgidError(f"--threshold {options.threshold} is not a cosine similarity in [-1, 1]")

    @classmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> ThresholdFilter:
        return cls(models.images, need(options.threshold, "the threshold filter needs --threshold T"))

    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        return source_similarity(self.images, data)

    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        return Verdict.below_threshold("threshold", "similarity to the source", scores, self.threshold, active)


def _below_label_mean(name: str, what: str, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
    labels = [e.label for e in data.generated]
    reject, means = below_group_mean(scores.values, labels, active)
    reasons = [
        f"{name}: {what} {scores.values[i]:.4f} < {label} mean {means[label]:.4f}" if reject[i] else None
        for i, label in enumerate(labels)
    ]
    return Verdict(reject, reasons, {"label_means": {str(k): v for k, v in sorted(means.items())}})
