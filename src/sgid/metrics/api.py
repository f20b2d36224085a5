"""``sgid metrics``: how far the generated images sit from the real ones, overall and per class.

Layout of OUT::

    metrics.json   every number, overall and per class, with settings and definitions
    metrics.md     the same as a table
    images.jsonl   per generated image: similarity to its source, CLIP score
    plots/*.png    per-class bar plots: similarity (paper figure 3), diversity, CLIP score, FID, KID

>>> metrics_run("data/sgid", "reports/sgid", models="tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sgid.dataset import scan
from sgid.errors import SgidError
from sgid.features import (
    FEATURES,
    ClipModels,
    ClipOptions,
    ExtractorOptions,
    FeatureStore,
    build_extractor,
    open_run_clip,
    rowwise_cosine,
)
from sgid.metrics.compute import DEFINITIONS, MetricsInput, compute_metrics
from sgid.metrics.quality import clip_scores
from sgid.metrics.report import metrics_markdown, write_plots
from sgid.outdir import check_out_dir, has_file
from sgid.progress import note, warn
from sgid.rundir import RunDir, check_sources, read_run_dir
from sgid.runstore import atomic_write, dumps

METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"
IMAGES = "images.jsonl"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class MetricsSummary:
    out_dir: Path
    overall: dict[str, Any]
    seconds: float

    def line(self) -> str:
        o = self.overall
        sim = o["similarity"]["mean"] if o["similarity"] else None
        parts = [f"{o['generated']} generated vs {o['reference']} real images"]
        if sim is not None:
            parts.append(f"similarity {sim:.4f}")
        if o["fid"] is not None:
            parts.append(f"FID {o['fid']:.2f}, KID {o['kid']['mean']:.4f}")
        return f"{', '.join(parts)}; see {self.out_dir / METRICS_MD} [{self.seconds:.1f}s]"


def metrics_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    reference: str | Path | None = None,
    features: str = "clip",
    inception_weights: str | Path | None = None,
    source_dir: str | Path | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    plots: bool = True,
    runtime: ClipOptions | None = None,
    **runtime_options: Any,
) -> MetricsSummary:
    """Python API of ``sgid metrics``. ``runtime``: the models and runtime options (``--models --scorer --device
    --dtype --cache-dir --no-cache --quiet``), as one :class:`ClipOptions` or field by field (``models="tiny"``).
    """
    runtime = ClipOptions.of(runtime, runtime_options)
    quiet = runtime.quiet
    started = time.monotonic()
    out = Path(out_dir)
    # 1. Check inputs: nothing is loaded before they pass
    if kid_subsets < 1 or kid_subset_size < 2:
        raise SgidError("--kid-subsets must be >= 1 and --kid-subset-size >= 2")
    run = read_run_dir(run_dir, source_dir=source_dir)
    generated = run.generated
    if not generated:
        raise SgidError(f"{run.path} has no generated images to measure")
    reference_dir = (
        Path(reference)
        if reference is not None
        else run.require_source_dir("as the reference of FID and KID; or pass --reference")
    )
    listing = scan(reference_dir)  # one-line error for a missing or empty folder
    references = listing.sources
    _check_shared_classes(run, reference_dir, listing.classes)
    _check_out_dir(out, run, reference_dir)
    inception = Path(inception_weights) if inception_weights else None
    FEATURES.get(features).check(ExtractorOptions(inception_weights=inception))
    with_source = [e for e in generated if e.source_path is not None]
    if with_source:
        run.require_source_dir("for the similarity to the originals")
        check_sources(with_source)
    # 2. Models: CLIP for similarity, diversity and CLIP score; the --features extractor for FID and KID
    run_clip = open_run_clip(run.models, run.models_preset, runtime)
    choice, feature_cache, tiny_note = run_clip.choice, run_clip.cache, run_clip.tiny_note
    clip = ClipModels(choice, feature_cache, quiet=quiet)
    if features == "clip":
        store = clip.images
    else:
        extractor = build_extractor(features, ExtractorOptions(clip.scorer, inception, str(choice.device)))
        store = FeatureStore(extractor, feature_cache, quiet=quiet, label="FID features")
    # 3. Embeddings
    try:
        data, skipped = _embed(run, references, reference_dir, clip, store)
    finally:
        feature_cache.close()
    # 4. Metrics, 5. outputs
    results = compute_metrics(data, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
    counts = {"clip": clip.feature_counts()}
    if store is not clip.images:
        counts[features] = (store.computed, store.reused)
    report = {
        "run_dir": str(run.path),
        "reference": str(reference_dir),
        "scorer": choice.identity,
        "tiny": tiny_note,
        "features": {
            "name": features,
            "identity": store.identity,
            "dim": int(data.features.shape[1]),
            "computed": {k: v[0] for k, v in counts.items()},
            "reused": {k: v[1] for k, v in counts.items()},
        },
        "kid": {"subsets": kid_subsets, "subset_size": kid_subset_size, "seed": seed},
        "definitions": DEFINITIONS,
        "reference_skipped": skipped,
        **results,
    }
    out.mkdir(parents=True, exist_ok=True)
    written = write_plots(report, out / PLOTS_DIR) if plots else []
    atomic_write(out / METRICS_JSON, (json.dumps(report, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    atomic_write(out / METRICS_MD, metrics_markdown(report, written).encode("utf-8"))
    atomic_write(out / IMAGES, "".join(dumps(row) + "\n" for row in _image_rows(run, data)).encode("utf-8"))
    summary = MetricsSummary(out, results["overall"], time.monotonic() - started)
    note(summary.line(), quiet)
    return summary


def _embed(
    run: RunDir, references: Any, reference_dir: Path, clip: ClipModels, store: FeatureStore
) -> tuple[MetricsInput, list[dict[str, str]]]:
    generated = run.generated
    n = len(generated)
    clip_emb = clip.images([e.path for e in generated])
    similarity = np.full(n, np.nan)
    with_source = [i for i, e in enumerate(generated) if e.source_path is not None]
    if with_source:
        sources = clip.images([generated[i].source_path for i in with_source])  # type: ignore[misc]
        similarity[with_source] = rowwise_cosine(clip_emb[with_source], sources)
    scores = np.full(n, np.nan)
    with_prompt = [i for i, e in enumerate(generated) if e.prompt]
    if with_prompt:
        texts = clip.texts([generated[i].prompt or "" for i in with_prompt])
        scores[with_prompt] = clip_scores(clip_emb[with_prompt], texts)
    gen_features = store([e.path for e in generated])
    same = run.source_dir is not None and reference_dir.resolve() == run.source_dir.resolve()
    unusable = run.unusable_sources if same else frozenset()
    references = [s for s in references if s.relpath not in unusable]
    ref_features, errors = store.extract([s.path for s in references])
    skipped = [{"image": references[i].relpath, "reason": reason} for i, reason in sorted(errors.items())]
    readable = [i for i in range(len(references)) if i not in errors]
    data = MetricsInput(
        labels=[e.label for e in generated],
        sources=[e.source for e in generated],
        similarity=similarity,
        clip_score=scores,
        clip_embeddings=clip_emb,
        features=gen_features,
        reference=ref_features[readable] if readable else np.zeros((0, gen_features.shape[1]), np.float32),
        reference_labels=[references[i].class_name for i in readable],
    )
    return data, skipped


def _image_rows(run: RunDir, data: MetricsInput) -> list[dict[str, Any]]:
    def number(x: float) -> float | None:
        return round(float(x), 6) if np.isfinite(x) else None

    return [
        {
            "file_name": e.file_name,
            "label": e.label,
            "source": e.source,
            "similarity": number(data.similarity[i]),
            "clip_score": number(data.clip_score[i]),
        }
        for i, e in enumerate(run.generated)
    ]


def _check_shared_classes(run: RunDir, reference: Path, classes: Sequence[str]) -> None:
    """FID and KID against a reference that shares no class with the run would measure nothing about it."""
    generated = sorted({e.label for e in run.generated})
    shared = set(generated) & set(classes)
    if not shared:
        raise SgidError(
            f"--reference {reference} shares no class with the run (run: {_few(generated)}; reference: "
            f"{_few(classes)}); pass the real images of the same classes"
        )
    missing = [c for c in generated if c not in shared]
    if missing:
        warn(
            f"--reference {reference} has no images of {len(missing)} of the run's classes ({_few(missing)}): "
            f"no per-class FID/KID for them"
        )


def _few(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_out_dir(out: Path, run: RunDir, reference: Path) -> None:
    """OUT must not sit inside a dataset folder: its plots would become a class of that dataset."""
    reads = [
        ("the run folder", run.path),
        ("the reference folder", reference),
        ("the real input folder", run.source_dir),
    ]
    check_out_dir(out, reads, command="metrics", owned=has_file(METRICS_JSON))
