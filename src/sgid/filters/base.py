"""What a filter is: a score for every generated image, then keep or reject for the images still in play.

Filters are small classes with their models passed to the constructor (tests hand in fakes) and registered
by name in :data:`FILTERS`; the registry key is the ``--filters`` value. :meth:`Filter.create` builds one
from the command-line options and the shared, lazily loaded models.

Composition (see :mod:`sgid.filters.chain`): filters run in the order given. Each *scores* every generated
image but *decides* only about the images that all earlier filters kept (``active``), and any statistic it
uses (a per-label mean, a best-of-k ranking, realfake's training set) is computed over those images only. So
``--filters a,b`` is the same as filtering with ``a`` and then filtering what is left with ``b``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from sgid.dataset import Source
from sgid.features import ImageEmbedder, TextEmbedder
from sgid.filters.rules import below_threshold as reject_below
from sgid.registry import Registry
from sgid.rundir import Entry

#: The zero-shot prompt of the label filter (paper appendix B (1)).
LABEL_TEMPLATE = "a photo of a {label}"

#: Class probabilities of a classifier for a batch of images, shape (N, num_classes).
PredictProba = Callable[[list[Image.Image]], np.ndarray]


@dataclass(frozen=True)
class FilterOptions:
    """Every filter's settings (the command-line flags); each filter reads its own."""

    threshold: float | None = None  # threshold: minimum image-source cosine similarity
    keep: int = 1  # best_of_k: augmentations kept per source
    rank_by: str = "original"  # best_of_k: whose score ranks them
    folds: int = 5  # realfake: cross-validation folds
    real_threshold: float = 0.5  # realfake: keep when the out-of-fold P(real) is at least this
    classifier: Path | None = None  # confidence: a classifier saved by sgid evaluate
    confidence_threshold: float = 0.5  # confidence: reject when another class gets at least this probability
    label_template: str = LABEL_TEMPLATE  # label: zero-shot prompt
    seed: int = 0  # realfake: fold assignment
    review_db: Path | None = None  # human: the database sgid review wrote


@dataclass(frozen=True)
class FilterInput:
    """The data being filtered."""

    generated: Sequence[Entry]  # the images to judge, in manifest order
    classes: Mapping[str, str]  # every class of the dataset: folder name -> label text
    real: Sequence[Source] = ()  # the real training images (read by realfake)
    run_identity: str | None = None  # the run's identity (RunDir.identity), for decisions stored per run

    def __len__(self) -> int:
        return len(self.generated)


@dataclass(frozen=True)
class Scores:
    """One number per generated image, higher is better; NaN where the filter cannot score the image."""

    values: np.ndarray  # (N,) float64
    missing: str | None = None  # why NaN rows have no score, e.g. "no source image"
    extra: dict[str, list[Any]] = field(default_factory=dict)  # more per-image columns for decisions.jsonl
    summary: dict[str, Any] = field(default_factory=dict)  # what scoring learned, for the report


@dataclass(frozen=True)
class Verdict:
    reject: np.ndarray  # (N,) bool, never True outside ``active``
    reasons: list[str | None]  # why each rejected image was rejected
    summary: dict[str, Any] = field(default_factory=dict)  # thresholds and the like, for the report

    @classmethod
    def explained(
        cls,
        reject: np.ndarray,
        data: FilterInput,
        why: Callable[[int, Entry], str],
        summary: dict[str, Any] | None = None,
    ) -> Verdict:
        """Reject where ``reject`` is set; ``why(i, entry)`` says why the i-th generated image is rejected (asked
        only for rejected images)."""
        reasons = [why(i, entry) if reject[i] else None for i, entry in enumerate(data.generated)]
        return cls(reject, reasons, summary or {})

    @classmethod
    def below_threshold(cls, name: str, what: str, scores: Scores, threshold: float, active: np.ndarray) -> Verdict:
        """Reject the ``active`` images scoring below ``threshold``, each because "``name``: ``what`` <score> <
        ``threshold``" (the threshold and realfake filters)."""
        reject = reject_below(scores.values, threshold, active)
        reasons = [
            f"{name}: {what} {value:.4f} < {threshold}" if out else None
            for value, out in zip(scores.values, reject, strict=True)
        ]
        return cls(reject, reasons, {"threshold": threshold})


@dataclass(frozen=True)
class FilterResult:
    name: str
    scores: Scores
    verdict: Verdict
    judged: np.ndarray  # (N,) bool: the images this filter decided about (kept by every earlier filter)


class FilterModels(Protocol):
    """The models filters are built from, loaded on first use."""

    @property
    def images(self) -> ImageEmbedder: ...  # CLIP image embeddings of image files

    @property
    def texts(self) -> TextEmbedder: ...  # CLIP text embeddings

    def classifier(self, directory: Path) -> tuple[PredictProba, list[str]]: ...


class Filter(ABC):
    name: ClassVar[str]
    help: ClassVar[str]
    #: what the filter reads besides the generated images: "sources" (each one's source image), "real" (the
    #: real training images)
    reads: ClassVar[frozenset[str]] = frozenset()
    #: the :class:`FilterOptions` fields it reads (``sgid filter`` warns about a setting no chosen filter reads)
    options_read: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def settings(cls, options: FilterOptions) -> frozenset[str]:
        """The :class:`FilterOptions` fields this filter reads with ``options``."""
        return cls.options_read

    @classmethod
    def check_options(cls, options: FilterOptions) -> None:
        """Raise :class:`~sgid.errors.SgidError` for bad settings (called before any model is loaded)."""
        return None  # most filters have no settings

    @classmethod
    def needs(cls, options: FilterOptions) -> frozenset[str]:
        return cls.reads

    @classmethod
    def uses_models(cls, options: FilterOptions) -> bool:
        """Whether the filter needs CLIP or a classifier (False: no model is chosen, built or loaded)."""
        return True

    @classmethod
    @abstractmethod
    def create(cls, options: FilterOptions, models: FilterModels) -> Filter: ...

    @abstractmethod
    def score(self, data: FilterInput, active: np.ndarray) -> Scores:
        """Score every image; ``active`` marks the images still in play (for set-dependent scores)."""

    @abstractmethod
    def decide(self, data: FilterInput, scores: Scores, active: np.ndarray) -> Verdict:
        """Reject some of the ``active`` images."""

    def apply(self, data: FilterInput, active: np.ndarray) -> FilterResult:
        scores = self.score(data, active)
        verdict = self.decide(data, scores, active)
        assert not (verdict.reject & ~active).any(), f"{self.name} rejected an image it was not asked about"
        return FilterResult(self.name, scores, verdict, active.copy())


#: ``--filters`` values, in the order they are documented.
FILTERS: Registry[type[Filter]] = Registry("filter")
