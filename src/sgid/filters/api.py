"""``sgid filter``: judge every generated image of a run with the chosen filters and write the kept ones.

>>> filter_run("data/sgid", "data/sgid-filtered", "label,prompt", models="tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from sgid.dataset import Source, scan
from sgid.errors import SgidError
from sgid.features import ClipModels, ClipOptions, open_run_clip
from sgid.filters.base import FILTERS, Filter, FilterInput, FilterModels, FilterOptions, PredictProba
from sgid.filters.chain import run_chain
from sgid.filters.output import check_out_dir, write_output
from sgid.filters.report import build_report, report_markdown
from sgid.progress import note, warn
from sgid.rundir import RunDir, check_sources, read_run_dir


@dataclass(frozen=True)
class FilterSummary:
    out_dir: Path
    generated: int
    kept: int
    features_computed: int
    features_reused: int
    seconds: float

    def line(self) -> str:
        return (
            f"kept {self.kept} of {self.generated} generated images in {self.out_dir} (decisions in "
            f"{self.out_dir / 'decisions.jsonl'}); features computed {self.features_computed}, "
            f"reused {self.features_reused} [{self.seconds:.1f}s]"
        )


class LoadedFilterModels(ClipModels):
    """CLIP (shared with the metrics) plus the classifiers the confidence filter reads."""

    def classifier(self, directory: Path) -> tuple[PredictProba, list[str]]:
        from sgid.evaluate.checkpoint import load_classifier, predict_proba

        model, meta = load_classifier(directory, device=self.choice.device)
        return (lambda images: predict_proba(model, meta, images)), list(meta["classes"])


class NoModels:
    """The models of a chain whose filters use none; asking for one is a bug in a filter's ``uses_models``."""

    def _refuse(self) -> Any:
        raise RuntimeError("a filter that declared it uses no models asked for one")

    images = property(_refuse)
    texts = property(_refuse)

    def classifier(self, directory: Path) -> tuple[PredictProba, list[str]]:
        return self._refuse()


def parse_filter_names(names: str | Sequence[str]) -> list[str]:
    """``"label,prompt"`` or ``["label", "prompt"]`` to known, distinct filter names, in order."""
    items = names.split(",") if isinstance(names, str) else list(names)
    parsed = [item.strip() for item in items if item.strip()]
    if not parsed:
        raise SgidError(f"--filters is empty; choose from: {', '.join(FILTERS.names())}")
    for name in parsed:
        FILTERS.get(name)
    repeated = sorted({n for n in parsed if parsed.count(n) > 1})
    if repeated:
        raise SgidError(f"--filters names {', '.join(repeated)} twice")
    return parsed


def filter_run(
    run_dir: str | Path,
    out_dir: str | Path,
    filters: str | Sequence[str],
    *,
    options: FilterOptions | None = None,
    source_dir: str | Path | None = None,
    loaded: FilterModels | None = None,
    runtime: ClipOptions | None = None,
    **runtime_options: Any,
) -> FilterSummary:
    """Python API of ``sgid filter``. ``runtime``: the models and runtime options (``--models --scorer --device
    --dtype --cache-dir --no-cache --quiet``), as one :class:`ClipOptions` or field by field (``models="tiny"``);
    ``loaded`` replaces the models (tests pass fakes)."""
    runtime = ClipOptions.of(runtime, runtime_options)
    quiet = runtime.quiet
    started = time.monotonic()
    options = options or FilterOptions()
    out = Path(out_dir)
    # 1. Check inputs: nothing is loaded before they pass
    names = parse_filter_names(filters)
    classes = [FILTERS.get(name) for name in names]
    for cls in classes:
        cls.check_options(options)
    _warn_unread(options, classes)
    run = read_run_dir(run_dir, source_dir=source_dir)
    check_out_dir(out, run)
    data = _filter_input(run, {cls.name: cls.needs(options) for cls in classes})
    # 2. Models (loaded on first use) and the filters
    tiny_note = scorer_id = None
    feature_cache = None
    if loaded is None and not any(cls.uses_models(options) for cls in classes):
        loaded = NoModels()  # e.g. --filters human: no model is chosen, built or loaded
    if loaded is None:
        clip = open_run_clip(run.models, run.models_preset, runtime)
        scorer_id, tiny_note, feature_cache = clip.choice.identity, clip.tiny_note, clip.cache
        loaded = LoadedFilterModels(clip.choice, feature_cache, quiet=quiet)
    try:
        chain_filters: list[Filter] = [cls.create(options, loaded) for cls in classes]
        # 3. Score and decide
        chain = run_chain(chain_filters, data)
    finally:
        if feature_cache is not None:
            feature_cache.close()
    # 4. Write
    computed, reused = _feature_counts(loaded)
    settings = {
        "run_dir": str(run.path),
        "out_dir": str(out),
        "source_dir": str(run.source_dir) if run.source_dir else None,
        "filters": names,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "scorer": scorer_id,
        "tiny": tiny_note,
        "features": {"computed": computed, "reused": reused},
    }
    originals: dict[str, int] = {}
    for entry in run.entries:
        if entry.is_original:
            originals[entry.label] = originals.get(entry.label, 0) + 1
    report = build_report(chain, settings=settings, originals=originals)
    kept_files = {e.file_name for e, keep in zip(data.generated, chain.kept, strict=True) if keep}
    kept = [e for e in run.entries if e.is_original or e.file_name in kept_files]
    write_output(out, run, kept, chain.decision_rows(), report, report_markdown(report))
    summary = FilterSummary(out, len(data), int(chain.kept.sum()), computed, reused, time.monotonic() - started)
    note(summary.line(), quiet)
    return summary


def _warn_unread(options: FilterOptions, classes: Sequence[type[Filter]]) -> None:
    """One warning per setting changed from its default that no chosen filter reads (it would be ignored)."""
    read = frozenset().union(*(cls.settings(options) for cls in classes))
    default = FilterOptions()
    for field in fields(FilterOptions):
        if field.name not in read and getattr(options, field.name) != getattr(default, field.name):
            readers = [name for name in FILTERS.names() if field.name in FILTERS.get(name).options_read]
            flag = "--" + field.name.replace("_", "-")
            warn(
                f"{flag} is read by the {' and '.join(readers)} filter only; it is ignored with --filters "
                f"{','.join(cls.name for cls in classes)}"
            )


def _filter_input(run: RunDir, readers: dict[str, frozenset[str]]) -> FilterInput:
    """The generated images, their sources checked, and the real images listed when a filter reads them."""
    generated = run.generated
    if not generated:
        raise SgidError(f"{run.path} has no generated images to filter (only copies of real ones)")
    needs = frozenset().union(*readers.values())
    if needs:
        run.require_source_dir(f"by filter {', '.join(name for name, reads in readers.items() if reads)}")
    if "sources" in needs:
        check_sources(generated)
    real: list[Source] = []
    if "real" in needs:
        real = [s for s in scan(run.require_source_dir("realfake")).sources if s.relpath not in run.unusable_sources]
    return FilterInput(generated, run.classes, real, run.identity)


def _feature_counts(models: Any) -> tuple[int, int]:
    counts = getattr(models, "feature_counts", None)
    return counts() if callable(counts) else (0, 0)
