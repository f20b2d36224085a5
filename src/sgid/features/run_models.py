"""The CLIP model of the commands that read a run (``sgid filter``, ``sgid metrics``): their runtime options
as one object (:class:`ClipOptions`), which CLIP model to use (``--scorer``, the ``--models`` preset's, or the
run's own), and the model loaded once, with its cached image features and text embeddings."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgid.errors import SgidError
from sgid.features.extractors import ClipImageFeatures, ClipTexts
from sgid.features.store import FEATURE_CACHE_FILE, FeatureCache, FeatureStore


@dataclass(frozen=True)
class ClipChoice:
    """Which CLIP model to load, where, in which precision (resolved before anything is loaded)."""

    ref: Any  # sgid.models.loading.ModelRef
    tiny: bool
    device: Any  # torch.device
    dtype: Any  # torch.dtype

    @property
    def identity(self) -> str:
        return f"{self.ref.name}@{self.ref.path}:{str(self.dtype).removeprefix('torch.')}"


@dataclass(frozen=True)
class ClipOptions:
    """The runtime options of the commands that read a run with CLIP (``sgid filter``, ``sgid metrics``):
    ``--models --scorer --device --dtype --cache-dir``, ``--no-cache`` and ``--quiet``, as one object."""

    models: str | None = None
    scorer: str | None = None
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | Path | None = None
    cache: bool = True
    quiet: bool = False

    @classmethod
    def from_args(cls, args: Any) -> ClipOptions:
        """From a command's parsed flags (see :func:`sgid.commands.augment.add_model_options`)."""
        return cls(**{f: getattr(args, f) for f in cls.__dataclass_fields__})

    @classmethod
    def of(cls, options: ClipOptions | None, keywords: Mapping[str, Any]) -> ClipOptions:
        """``options`` (or the defaults) with the fields in ``keywords`` replaced: ``filter_run`` and
        ``metrics_run`` take the options as one object, field by field (``models="tiny"``), or both."""
        unknown = sorted(set(keywords) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
        return dataclasses.replace(options or cls(), **keywords)

    def root(self) -> Path:
        """The cache folder: ``--cache-dir``, else the default (where tiny models and the feature cache live)."""
        from sgid.models.loading import default_cache_dir

        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


def choose_clip(run_models: Mapping[str, str], run_preset: str | None, options: ClipOptions) -> ClipChoice:
    """The CLIP model for a command reading a run: ``--scorer``, else the ``--models`` preset's, else the one
    the run itself used (so a ``--models tiny`` run is filtered with tiny CLIP without saying so again)."""
    from sgid.models.loading import resolve_device, resolve_dtype, resolve_models

    scorer = options.scorer
    if scorer is None and options.models is None:
        scorer = run_models.get("scorer")
        if scorer is not None and not isinstance(scorer, str):  # a run.json edited by hand
            raise SgidError(
                f"the run's run.json names its CLIP model {json.dumps(scorer)[:40]} (models.scorer), not a model "
                f"name: restore it, or pass --scorer or --models"
            )
    resolved_device = resolve_device(options.device or "auto")  # checked before resolve_models builds tiny models
    resolved_dtype = resolve_dtype(options.dtype or "auto", resolved_device)
    choice = resolve_models(options.models or run_preset or "default", cache_dir=options.root(), scorer=scorer)
    return ClipChoice(choice.scorer, choice.scorer.name.startswith("tiny:"), resolved_device, resolved_dtype)


@dataclass
class RunClip:
    """The CLIP model a command reading a run uses, and the feature cache it shares with other commands."""

    choice: ClipChoice
    cache: FeatureCache
    tiny_note: str | None  # the tiny-models warning, when they are used (also recorded in reports)


def open_run_clip(run_models: Mapping[str, str], run_preset: str | None, options: ClipOptions) -> RunClip:
    """Choose the CLIP model (see :func:`choose_clip`), say so when it is the tiny one, open the cache."""
    from sgid.models.loading import TINY_WARNING
    from sgid.progress import note

    choice = choose_clip(run_models, run_preset, options)
    tiny_note = TINY_WARNING if choice.tiny else None
    if tiny_note:
        note(tiny_note, options.quiet)
    return RunClip(choice, FeatureCache(options.root() / FEATURE_CACHE_FILE if options.cache else None), tiny_note)


def load_clip(choice: ClipChoice) -> tuple[Any, str]:
    """(ClipScorer, identity) for ``choice``; loaded once per process."""
    from sgid.models.loading import load_scorer
    from sgid.stages.score import ClipScorer

    model, processor = load_scorer(choice.ref, choice.device, choice.dtype)
    return ClipScorer(model, processor), choice.identity


class ClipModels:
    """CLIP, loaded on first use: cached image features of files and text embeddings."""

    def __init__(self, choice: ClipChoice, cache: FeatureCache | None = None, *, quiet: bool = True) -> None:
        self.choice = choice
        self.cache = cache or FeatureCache(None)
        self.quiet = quiet
        self._loaded: tuple[Any, str] | None = None
        self._images: FeatureStore | None = None
        self._texts: ClipTexts | None = None

    def scorer(self) -> tuple[Any, str]:
        """(ClipScorer, model identity)."""
        if self._loaded is None:
            self._loaded = load_clip(self.choice)
        return self._loaded

    @property
    def images(self) -> FeatureStore:
        if self._images is None:
            self._images = FeatureStore(
                ClipImageFeatures(*self.scorer()), self.cache, quiet=self.quiet, label="CLIP features"
            )
        return self._images

    @property
    def texts(self) -> ClipTexts:
        if self._texts is None:
            self._texts = ClipTexts(self.scorer()[0])
        return self._texts

    def feature_counts(self) -> tuple[int, int]:
        """(computed, reused) image features so far."""
        return (self._images.computed, self._images.reused) if self._images else (0, 0)
