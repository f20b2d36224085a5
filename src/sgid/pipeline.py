"""``sgid augment``: plan → execute → write.

1. **Plan** (:mod:`sgid.plan`). Every source is measured (its header), every (source, k) gets a slot, and
   slots are cut into batches and shards from the full sorted list, so no batch depends on what an earlier
   run finished. The sources that work needs are read; when the method uses captions, BLIP captions and CLIP
   similarities are computed (or taken from the cache) in fixed groups. The method prepares what needs the
   whole dataset, then plans each (source, k): caption, prompt, weights, guidance, generator. Captions chosen
   from elsewhere are scored.
2. **Execute** (:mod:`sgid.execute`, through an engine of :mod:`sgid.engines`). Workers turn shards into
   image bytes and manifest rows; they never touch OUT.
3. **Write** (:mod:`sgid.runstore`). The driver's single writer commits each image (atomically, then
   journaled) as it arrives, ignoring anything already done.

``text2img+sgid``-style chains run one method after another, each stage a complete run of its own.
"""

from __future__ import annotations

import hashlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sgid import __version__, interrupt
from sgid.cache import Cache, cache_key
from sgid.config import AugmentConfig
from sgid.dataset import EMPTY_CLASS, Listing, Source, empty_classes_note, label_code_warning, read_label_names, scan
from sgid.engines import ENGINES, Engine
from sgid.errors import SgidError, disk_full_is_one_line
from sgid.estimate import DryRun, denoising_steps, guidance_passes, is_perturbation
from sgid.execute import ItemResult, Worker, WorkerSpec
from sgid.images import ImageError, LoadedImage, load_rgb, probe_size, sha256_bytes
from sgid.interrupt import Interrupted, signal_name
from sgid.manifest import ErrorRow, json_lines
from sgid.methods import (
    METHODS,
    Method,
    MethodContext,
    Services,
    SkipItem,
    chain_parts,
    denoising_warning,
    ignored_options,
    option_warnings,
)
from sgid.models.loading import (
    TINY_WARNING,
    Geometry,
    ModelChoice,
    default_cache_dir,
    is_tiny,
    model_id,
    resolve_device,
    resolve_dtype,
    resolve_models,
    sd_geometry,
)
from sgid.options import augment_signature, resolve_options
from sgid.outdir import check_out_dir
from sgid.plan import (
    Batch,
    Calibration,
    CaptionSource,
    CaptionTask,
    Layout,
    ScoreRequest,
    ScoreTask,
    Shard,
    Slot,
    Timing,
    WorkItem,
    caption_groups,
    chunks,
    lay_out,
    shards_of,
    target_size,
)
from sgid.progress import bar, counted, estimate_note, note, warn
from sgid.runstore import ERRORS, RUN_FILE, RunStore, copy_or_link, item_key
from sgid.sample import Sample, SourceInfo
from sgid.seeding import derive_seed
from sgid.stages.bundle import PARTS, Stages, runs_diffusion, used_models
from sgid.stages.caption import Caption
from sgid.stages.guidance import range_note
from sgid.versions import package_versions

MANIFEST_FLUSH_SECONDS = 30.0
CPU_STEPS_HINT = 200  # denoising steps (images x steps) above which a CPU run says how to make it small
SCORE_TASK_SIZE = 64  # chosen captions scored per task


@dataclass(frozen=True)
class RunSummary:
    out_dir: Path
    generated: int  # images made by this invocation
    already_done: int  # images found finished from an earlier invocation
    failed: int  # rows in errors.jsonl but those of empty class folders (not a failure: not a class)
    total_images: int  # rows in metadata.jsonl
    seconds: float
    notes: tuple[str, ...] = ()  # lines printed after the summary (the range of g used)
    empty_classes: tuple[str, ...] = ()  # class folders without images, left out (each a row in errors.jsonl)

    def line(self) -> str:
        skipped = f"{self.already_done} already done"
        if self.empty_classes:
            names = ", ".join(self.empty_classes[:3]) + (", ..." if len(self.empty_classes) > 3 else "")
            skipped += f" and {len(self.empty_classes)} class folder(s) without images ({names})"
        return (
            f"generated {self.generated}, skipped {skipped}, failed {self.failed} "
            f"(see {self.out_dir / 'errors.jsonl'}), {self.total_images} images in {self.out_dir} "
            f"[{self.seconds:.1f}s]"
        )


def augment(
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    preset: str | None = None,
    print_summary: bool = False,
    dry_run: bool = False,
    **options: Any,
) -> Any:
    """Augment a labelled image folder (``sgid augment INPUT --out OUT``); returns a :class:`RunSummary`, or
    with ``dry_run=True`` a :class:`~sgid.estimate.DryRun`: what the run would do and an estimate of its time,
    nothing written (for a chain of methods, its first method's run: later ones build on its output).

    Every option of the command is a keyword argument: its flag with ``_`` for ``-`` (``--multiplier`` →
    ``multiplier``, ``--no-cache`` → ``no_cache=True``, ``--template`` → ``template=[...]``; the older names
    ``caption_cache``, ``templates``, ``instructions`` still work). A keyword left out (``None``) takes the
    method's or the preset's value, else the paper's default. ``preset``: a dataset preset of the paper's table
    8. ``print_summary=True`` prints the command's one-line summary on stderr (off by default in Python). An
    unknown keyword is a ``TypeError`` naming the closest ones; bad values raise :class:`~sgid.errors.SgidError`
    before any model is loaded. ``inspect.signature(augment)`` lists every keyword (generated from the settings,
    :mod:`sgid.options`).

    >>> augment("data/train", "data/sgid", models="tiny", noise=0.5, multiplier=2)  # doctest: +SKIP
    """
    settings = resolve_options(options)
    config = AugmentConfig.build(input_dir, out_dir, preset=preset, **settings)
    for line in option_warnings(config, _given(settings)):
        warn(line)
    stages = _stages(input_dir, out_dir, preset, settings)
    if len(stages) > 1:
        _check_chain_outputs(stages)
    for stage in stages:
        _warn_denoising(stage)  # a dry run too: it is where a user checks a command before the long run
    if dry_run:
        return Augmenter(stages[0]).dry_run()
    summary = [Augmenter(stage).run() for stage in stages][-1]
    if print_summary:
        note(summary.line(), config.quiet)
        for line in summary.notes:
            note(line, config.quiet)
    return summary


augment.__signature__ = augment_signature()  # type: ignore[attr-defined]


def _stages(
    input_dir: str | Path, out_dir: str | Path, preset: str | None, options: dict[str, Any]
) -> list[AugmentConfig]:
    """The run of each method of ``options["method"]`` (one, or a chain's), configured and checked."""
    parts = chain_parts(options.get("method") or "sgid")
    if len(parts) == 1:
        return [_stage_config(input_dir, out_dir, preset, options)]
    # A chain: each method runs on the previous one's output; intermediate runs sit beside OUT. Every stage
    # is configured (and checked) before the first one starts.
    out = Path(out_dir)
    stages: list[AugmentConfig] = []
    current: Path = Path(input_dir)
    for number, part in enumerate(parts, start=1):
        target = out if number == len(parts) else out.parent / f"{out.name}.stages" / f"{number}-{part}"
        stage = _stage_config(current, target, preset, {**options, "method": part})
        stages.append(replace(stage, multiplier=1) if number > 1 else stage)  # one per earlier augmentation
        current = target
    return stages


def _check_chain_outputs(stages: list[AugmentConfig]) -> None:
    """Every stage's folder is checked (read-only) before the first stage runs: a refusal of the last one after
    hours of the first helps no one. The intermediate runs' folder holds nothing but sgid's stage runs."""
    stage_root = stages[0].out_dir.parent
    if stage_root.is_dir():
        foreign = sorted(
            p.name for p in stage_root.iterdir() if not (p.is_dir() and p.name[:1].isdigit() and "-" in p.name)
        )
        if foreign:
            raise SgidError(
                f"{stage_root} holds files that are not sgid's stage runs ({', '.join(foreign[:3])}); a chain keeps "
                f"its intermediate runs there: move them or choose another --out"
            )
    for stage in stages:
        _check_out_dir(stage)
        RunStore(stage.out_dir, {}, stage.identity(), overwrite=stage.overwrite).check()


def _given(options: dict[str, Any]) -> list[str]:
    return [k for k, v in options.items() if v is not None]


def _stage_config(
    input_dir: str | Path, out_dir: str | Path, preset: str | None, options: dict[str, Any]
) -> AugmentConfig:
    """The settings of one method's run, without the given options that method does not read (``augment``
    warns about them): an ignored flag changes neither the run's identity nor what ``run.json`` records, so a
    rerun without it resumes."""
    config = AugmentConfig.build(input_dir, out_dir, preset=preset, **options)
    ignored = ignored_options(config, _given(options))
    if not ignored:
        return config
    return AugmentConfig.build(input_dir, out_dir, preset=preset, **{**options, **dict.fromkeys(ignored)})


def _warn_denoising(config: AugmentConfig) -> None:
    line = denoising_warning(config)
    if line:
        warn(f"--method {config.method}: {line}")


class Augmenter:
    """One run of one method. ``stages`` replaces the models the driver would load (tests hand in stand-ins)."""

    def __init__(self, config: AugmentConfig, stages: Stages | None = None) -> None:
        self.config = config
        self.method: Method = METHODS.get(config.method)(config)
        self._stages = stages
        self.cache_dir = config.cache_dir or default_cache_dir()

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        c = self.config
        started = time.monotonic()
        with interrupt.graceful():  # a first SIGTERM/SIGINT stops at the next clean point (sgid.interrupt)
            # 1. Check inputs (no model is loaded before this passes)
            listing, choice, store = self._check()
            finished = self._finished_run(listing, store, started)
            if finished is not None:  # a rerun of a finished run: no model is loaded
                note(f"nothing to do: every image of this run is already in {c.out_dir}", c.quiet)
                return finished
            engine = self._engine()
            driver = Worker(WorkerSpec(c, choice), self._stages)
            engine.start(driver.spec, driver)  # joins or starts a cluster; options it cannot meet fail here
            interrupt.reassert()  # ray.init puts in a SIGTERM handler of its own
            try:
                # 2. Load the driver's models, failing before any work when weights are missing
                self._load(driver, engine)
                codes = label_code_warning(listing.labels, c.label_template)
                if codes:  # a warning, after every check (a refused run prints its one error line only)
                    warn(codes)
                variant_note = self.method.variant_note()
                if variant_note:
                    note(variant_note, c.quiet)
                self._announce(listing, store, choice)  # the models are there: now the long part, said first
                interrupt.check()
                cache = Cache(self.cache_dir / "cache.sqlite" if c.caption_cache else None)
                try:
                    kept = lambda: counted(len(store.rows), "image", "images") + " kept"  # noqa: E731
                    with disk_full_is_one_line(c.out_dir, kept):
                        done_before, generated = self._run_in(store, listing, engine, driver, cache)
                finally:
                    cache.close()
            finally:
                engine.close()
        failed = sum(map(_is_failure, store.input_errors)) + len(store.output_errors)
        guidance = self._guidance_note(store.rows.values())
        notes = (guidance,) if guidance else ()
        seconds = time.monotonic() - started
        return RunSummary(c.out_dir, generated, done_before, failed, len(store.rows), seconds, notes, listing.empty)

    def _finished_run(self, listing: Listing, store: RunStore, started: float) -> RunSummary | None:
        """The summary of a run that has nothing left to do (every item finished and listed in metadata.jsonl,
        every source not finished unreadable), else None. Read-only: nothing is loaded, locked or written."""
        c = self.config
        if c.overwrite or not (c.out_dir / RUN_FILE).exists():
            return None
        seen = RunStore(c.out_dir, {}, store.identity).peek()  # a read-only look: no lock, no repair
        if not seen.manifest_is_current():
            return None  # stopped before its manifest was written, or it was edited since: the normal path rebuilds it
        for source in listing.sources:
            keys = [item_key(source.relpath, k, self.method.name) for k in range(c.multiplier)]
            if c.include_originals:
                keys.append(item_key(source.relpath, None, "original"))
            if all(seen.is_done(key) for key in keys):
                continue
            try:
                load_rgb(source.path, max_pixels=c.max_pixels, min_side=c.min_side)
                return None  # readable and not finished: work to do
            except ImageError:
                continue  # listed in errors.jsonl by the run that found it
        total = len(seen.rows)
        seconds = time.monotonic() - started
        return RunSummary(c.out_dir, 0, total, _failures(c.out_dir / ERRORS), total, seconds, (), listing.empty)

    def _announce(self, listing: Listing, store: RunStore, choice: ModelChoice) -> None:
        """The work about to start, and on a CPU with real models the flags that make it small."""
        c = self.config
        if c.quiet:
            return
        seen = RunStore(c.out_dir, {}, store.identity, overwrite=c.overwrite).peek()
        keys = (item_key(s.relpath, k, self.method.name) for s in listing.sources for k in range(c.multiplier))
        items = sum(not seen.is_done(key) for key in keys)
        if not any(runs_diffusion(kind) for kind in self.method.generator_kinds):
            note(f"planned: {items} image(s) with {self.method.name} (no diffusion model)")
            return
        steps = int(c.steps * c.noise) if "noise" in self.method.options else c.steps
        model = choice.instruct if "instruct" in self.method.generator_kinds else choice.generator
        device = resolve_device(c.device).type
        line = (
            f"planned: {items} image(s) with {self.method.name}, {steps} denoising steps each ({model.name}, {device})"
        )
        if device == "cpu" and not is_tiny(choice) and items * steps > CPU_STEPS_HINT:
            line += (
                "; Stable Diffusion takes seconds per step on a CPU: to make it small, --steps 20 --multiplier 1 "
                "(or --models tiny to try the pipeline)"
            )
        note(line)

    def _guidance_note(self, rows: Iterable[Mapping[str, Any]]) -> str | None:
        """The range of g = f(s*) the run's images were made with (None for a constant guidance)."""
        if not self.config.guidance_map.needs_similarity:
            return None
        used = [
            (row["guidance_raw"], row["guidance_scale"])
            for row in rows
            if row.get("method") == self.method.name and row.get("guidance_raw") is not None
        ]
        return range_note(used, self.config.guidance_floor) if used else None

    # -- --dry-run -----------------------------------------------------------------------------------------
    def dry_run(self) -> DryRun:
        """What :meth:`run` would do, and its time estimated from one calibration batch; writes nothing."""
        c = self.config
        listing, choice, store = self._check()
        store.peek()
        engine = self._engine()
        driver = Worker(WorkerSpec(c, choice), self._stages)
        engine.start(driver.spec, driver)
        interrupt.reassert()  # ray.init puts in a SIGTERM handler of its own
        try:
            self._load(driver, engine)
            cache = Cache(self.cache_dir / "cache.sqlite" if c.caption_cache else None, readonly=True)
            layout, unusable = self._lay_out(listing, driver, engine.workers)
            slots = list(layout.slots)
            done = sum(store.is_done(s.key) for s in slots)
            needed = self._sources_needed(layout, store)
            kind = slots[0].kind if slots else self.method.generator_kinds[0]
            report = DryRun(
                input_dir=c.input_dir,
                out_dir=c.out_dir,
                engine=engine.describe(),
                workers=engine.workers,
                device=self._device_label(engine),
                sources=len({s.source.relpath for s in slots}),
                unusable=len(listing.skipped) + len(unusable),
                images=len(slots),
                done=done,
                to_make=len(slots) - done,
                to_caption=self._uncached(listing, needed, driver, cache),
                steps=denoising_steps(kind, c),
                passes=guidance_passes(kind, c),
            )
            report = self._calibrate(report, listing, layout, store, engine, driver, cache)
            cache.close()
        finally:
            engine.close()
        return report

    def _device_label(self, engine: Engine) -> str:
        device = resolve_device(engine.device)
        return f"{device.type} {str(resolve_dtype(self.config.dtype, device)).removeprefix('torch.')}"

    def _uncached(self, listing: Listing, needed: set[str], driver: Worker, cache: Cache) -> int:
        """How many of the needed sources have no captions in the cache (their bytes hashed, not decoded)."""
        if not self.method.needs_captions():
            return 0
        ids = self._model_ids(driver)
        keys = {}
        for source in listing.sources:
            if source.relpath in needed:
                digest = sha256_bytes(source.path.read_bytes())
                keys[source.relpath] = self._caption_key(
                    digest, derive_seed(self.config.seed, source.relpath, "captions"), ids
                )
        return len(keys) - len(cache.get_many("captions", keys.values()))

    def _calibrate(
        self,
        report: DryRun,
        listing: Listing,
        layout: Layout,
        store: RunStore,
        engine: Engine,
        driver: Worker,
        cache: Cache,
    ) -> DryRun:
        """Caption the first caption group and generate the first batch with work, each twice, timed."""
        first = next(
            (n for n, batch in enumerate(layout.batches) if not all(store.is_done(s.key) for s in batch)), None
        )
        if first is None:
            return report
        wanted = {slot.source.relpath for slot in layout.batches[first]}
        timings: list[Timing] = []
        infos, _ = self._read_and_caption(listing, layout, wanted, engine, driver, Cache(None), timings=timings)
        said, caption_seconds = [], None
        if timings:
            caption_seconds = timings[0].second / timings[0].items
            said.append(f"captions of {timings[0].items} images in {timings[0].second:.1f} s")
        generation_seconds = None
        if report.steps or is_perturbation(layout.batches[first][0].kind):  # retrieval: copies, nothing to time
            context = self._context(listing, infos, driver)
            work = self._plan_work(Layout((layout.batches[first],), (0,)), context, store, commit=False)
            work = self._score_chosen_captions(work, engine, driver, cache)
            if work:
                batch = next(iter(work.values()))
                shard = Shard(0, (Batch(batch.size, tuple(replace(i, wanted=True) for i in batch.items)),))
                found: list[Timing] = []
                engine.run([Calibration(shard)], lambda r: found.append(r) if isinstance(r, Timing) else None)
                generation_seconds = found[0].second / found[0].items
                said.append(
                    f"a batch of {found[0].items} images in {found[0].second:.1f} s "
                    f"(after {found[0].first:.1f} s loading and warming up)"
                )
        return replace(
            report,
            caption_seconds=caption_seconds,
            generation_seconds=generation_seconds,
            calibration=", ".join(said),
        )

    def _check(self) -> tuple[Listing, ModelChoice, RunStore]:
        """The input listing, the models to use and OUT's store, all checked without loading a model."""
        c = self.config
        listing = self._scan()
        if listing.empty:  # listed in errors.jsonl with the other skipped inputs
            warn(empty_classes_note(c.input_dir, listing.empty))
        if c.concepts is not None:
            _check_concepts(c.concepts, listing.classes)
        _check_out_dir(c)
        choice = self._resolve_models()
        store = RunStore(c.out_dir, self._run_info(choice), c.identity(), overwrite=c.overwrite)
        store.check()
        return listing, choice, store

    def _engine(self) -> Engine:
        engine = ENGINES.get(self.config.engine)(self.config)
        if self._stages is not None and not engine.needs_local_models:
            raise SgidError(f"--engine {self.config.engine} loads its own models; stages cannot be handed in")
        return engine

    def _run_in(
        self, store: RunStore, listing: Listing, engine: Engine, driver: Worker, cache: Cache
    ) -> tuple[int, int]:
        """Plan, execute and write with OUT open; (images done before, images made now). Whatever stops the
        run (a signal, a full disk, an error), the finished images are committed and the manifests written."""
        c = self.config
        with store.session():
            done_before = len(store.rows)
            try:
                store.input_errors = [ErrorRow(rel, None, why) for rel, why in listing.skipped]
                # 3. Plan: lay out every item, read and caption what the work needs, plan it
                layout, sizes_errors = self._lay_out(listing, driver, engine.workers)
                store.input_errors += sizes_errors
                needed = self._sources_needed(layout, store)
                infos, read_errors = self._read_and_caption(listing, layout, needed, engine, driver, cache)
                store.input_errors += read_errors
                context = self._context(listing, infos, driver)
                store.input_errors += context.prepared.notes
                work = self._plan_work(layout, context, store)
                work = self._score_chosen_captions(work, engine, driver, cache)
                # 4. Execute and write: the engine runs the shards, the writer commits what comes back
                generated = self._generate(layout, work, engine, store)
                interrupt.check()  # the engine stopped early: say so (what it finished is committed)
                if c.include_originals:
                    self._write_originals(listing, infos, store)
            except Interrupted as exc:
                _write_manifests_after_failure(store)
                kept = counted(len(store.rows), "image", "images")
                stopped = f"stopped by {signal_name(exc.signum)}"
                resume = f"{stopped}; {kept} kept in {c.out_dir}, rerun the same command to resume"
                raise Interrupted(exc.signum, resume) from None
            except BaseException:
                _write_manifests_after_failure(store)
                raise
            store.write_manifests()
        return done_before, generated

    def _scan(self) -> Listing:
        c = self.config
        names = read_label_names(c.label_names) if c.label_names else None
        return scan(c.input_dir, names, progress=not c.quiet)

    def _resolve_models(self) -> ModelChoice:
        c = self.config
        return resolve_models(
            c.models,
            cache_dir=self.cache_dir,
            captioner=c.captioner,
            scorer=c.scorer,
            generator=c.sd_model,
            instruct=c.instruct_model,
            text=c.text_model,
            sd_config=c.sd_config,
            backend=c.backend,
            control=c.control,
            controlnet=c.controlnet,
            control_model=c.control_model,
        )

    def _load(self, driver: Worker, engine: Engine) -> None:
        """The driver's models: every one for the local engine; only what ``prepare`` uses otherwise."""
        if engine.needs_local_models:
            driver.stages(*PARTS)
        else:
            driver.stages(*(["text"] + (["scorer"] if self.method.needs_scorer() else [])))
        if is_tiny(driver.spec.choice):
            note(TINY_WARNING, self.config.quiet)

    def _run_info(self, choice: ModelChoice) -> dict[str, Any]:
        return {
            "sgid_version": __version__,
            "config": self.config.to_dict(),
            "variant": self.method.variant(),
            "models": {role: ref.name for role, ref in used_models(choice, self.method).items()},
            "versions": package_versions(),
            "command": " ".join(["sgid", *sys.argv[1:]]) if sys.argv and "sgid" in sys.argv[0] else None,
        }

    # -- 3. plan -------------------------------------------------------------------------------------------
    def _geometry(self, kind: str, driver: Worker) -> Geometry:
        """Generation sizes: from the driver's loaded generators, else from the checkpoint's configs."""
        stages = driver.loaded_stages
        if stages is not None and kind in stages.generators:
            return Geometry(stages.resolution(kind), stages.size_multiple(kind))
        if not runs_diffusion(kind):  # retrieved or perturbed: the images' own sizes, no checkpoint to read
            return Geometry(None)
        choice = driver.spec.choice
        return sd_geometry(choice.instruct if kind == "instruct" else choice.generator)

    def _lay_out(self, listing: Listing, driver: Worker, workers: int) -> tuple[Layout, list[ErrorRow]]:
        """Every (source, k) as a slot with its generation size (from the image's header), in batches/shards."""
        c = self.config
        names = output_names(listing.sources, self.method.name)
        slots: list[Slot] = []
        errors: list[ErrorRow] = []
        geometries: dict[str, Geometry] = {}
        for source in listing.sources:
            interrupt.check()
            try:
                size = probe_size(source.path, max_pixels=c.max_pixels, min_side=c.min_side)
            except ImageError as exc:
                errors.append(ErrorRow(source.relpath, None, str(exc)))
                continue
            kind = self.method.generator_kind(source)
            if kind not in geometries:
                geometries[kind] = self._geometry(kind, driver)
            for k in range(c.multiplier):
                slots.append(
                    Slot(
                        source=source,
                        k=k,
                        key=item_key(source.relpath, k, self.method.name),
                        file_name=f"{source.class_name}/{names[source.relpath]}_{k}.png",
                        kind=kind,
                        size=target_size(geometries[kind], size),
                    )
                )
        return lay_out(slots, c.batch_size, c.shard_size, workers=workers), errors

    def _sources_needed(self, layout: Layout, store: RunStore) -> set[str]:
        """Sources the work reads: those of every batch with an item left to do (batch-mates included, so the
        batch is planned whole), or all of them when planning one item looks at the others."""
        measured = {slot.source.relpath for slot in layout.slots}
        if self.method.needs_all_sources():
            return measured
        needed = {
            slot.source.relpath
            for batch in layout.batches
            if not all(store.is_done(slot.key) for slot in batch)
            for slot in batch
        }
        if self.config.include_originals:
            needed |= {rel for rel in measured if not store.is_done(item_key(rel, None, "original"))}
        return needed

    def _read_and_caption(
        self,
        listing: Listing,
        layout: Layout,
        needed: set[str],
        engine: Engine,
        driver: Worker,
        cache: Cache,
        *,
        timings: list[Timing] | None = None,
    ) -> tuple[dict[str, SourceInfo], list[ErrorRow]]:
        """Read the needed sources (in fixed caption groups); caption every group not wholly in the cache.
        With ``timings``, the first caption task runs as a calibration and its timing is added to the list."""
        c = self.config
        captioning = self.method.needs_captions()
        infos: dict[str, SourceInfo] = {}
        errors: list[ErrorRow] = []
        tasks: list[CaptionTask] = []
        captions: dict[str, tuple[Caption, ...]] = {}
        keys: dict[str, str] = {}
        ids = self._model_ids(driver)
        measured = {slot.source.relpath for slot in layout.slots}
        progress = bar(len(needed), "reading", "img", c.quiet)
        for number, group in enumerate(
            caption_groups(listing.sources, c.caption_batch_size, lambda s: s.relpath in needed)
        ):
            interrupt.check()
            # a caption group is captioned whole, so its members never depend on what is done
            members = [s for s in group if s.relpath in (measured if captioning else needed)]
            loaded: list[tuple[Source, LoadedImage]] = []
            for source in members:
                try:
                    loaded.append((source, load_rgb(source.path, max_pixels=c.max_pixels, min_side=c.min_side)))
                except ImageError as exc:
                    errors.append(ErrorRow(source.relpath, None, str(exc)))
            for source, image in loaded:
                infos[source.relpath] = SourceInfo(sha256=image.sha256, size=image.image.size)
            if captioning and loaded:
                seeds = {s.relpath: derive_seed(c.seed, s.relpath, "captions") for s, _ in loaded}
                group_keys = {s.relpath: self._caption_key(img.sha256, seeds[s.relpath], ids) for s, img in loaded}
                keys.update(group_keys)
                cached = cache.get_many("captions", group_keys.values())
                if all(key in cached for key in group_keys.values()):
                    captions.update({rel: _captions(cached[key]) for rel, key in group_keys.items()})
                else:
                    sources = (CaptionSource(s.relpath, s.path, img.sha256, seeds[s.relpath]) for s, img in loaded)
                    tasks.append(CaptionTask(number, tuple(sources)))
            progress.update(sum(s.relpath in needed for s in group))
        progress.close()
        if tasks:
            progress = bar(sum(t.items for t in tasks), "captioning", "img", c.quiet)

            def receive(result: Any) -> None:
                if isinstance(result, Timing):
                    if timings is not None:
                        timings.append(result)
                    return
                relpath, found = result
                if relpath not in captions:
                    cache.put_many("captions", {keys[relpath]: found})
                    captions[relpath] = _captions(found)
                    progress.update(1)

            engine.run([Calibration(tasks[0]), *tasks[1:]] if timings is not None else tasks, receive)
            progress.close()
            interrupt.check()
        for relpath, found in captions.items():
            infos[relpath] = replace(infos[relpath], captions=found)
        return infos, errors

    def _model_ids(self, driver: Worker) -> tuple[str | None, str | None]:
        """(captioner, scorer) as recorded in caches and manifests."""
        stages, choice = driver.loaded_stages, driver.spec.choice
        captioner = stages.captioner_id if stages and stages.captioner_id else model_id(choice.captioner)
        scorer = stages.scorer_id if stages and stages.scorer_id else model_id(choice.scorer)
        return captioner, scorer

    def _caption_key(self, sha256: str, seed: int, ids: tuple[str | None, str | None]) -> str:
        c = self.config
        return cache_key(
            image=sha256, model=ids[0], settings=vars(c.captions), seed=seed, scorer=ids[1], similarity=c.similarity
        )

    def _context(self, listing: Listing, infos: dict[str, SourceInfo], driver: Worker) -> MethodContext:
        """What the method plans with, including what it prepares over the whole dataset."""
        context = MethodContext(
            config=self.config,
            sources=listing.sources,
            infos=infos,
            labels=listing.labels,
            prompt_labels={**listing.labels, **(self._concept_labels(driver) or {})},
        )
        return replace(context, prepared=self.method.prepare(context, self._services(driver)))

    def _concept_labels(self, driver: Worker) -> dict[str, str] | None:
        """Class folder -> what SD prompts say instead of the label (a token, or a LoRA's "<token> label")."""
        stages = driver.loaded_stages
        if stages is not None and stages.generators:
            return stages.concept_labels or stages.concept_tokens
        if self.config.concepts is None:
            return None
        from sgid.concepts.apply import concept_labels

        return concept_labels(self.config.concepts)

    def _services(self, driver: Worker) -> Services:
        stages = driver.loaded_stages or Stages()
        return Services(text=stages.text, scorer=stages.scorer, scorer_id=stages.scorer_id, cache_dir=self.cache_dir)

    def _plan_work(
        self, layout: Layout, context: MethodContext, store: RunStore, *, commit: bool = True
    ) -> dict[int, Batch]:
        """The batches with something left to do, planned whole (batch index -> batch). Items the method skips
        are journaled as errors (unless ``commit`` is False: a dry run)."""
        c = self.config
        work: dict[int, Batch] = {}
        for number, batch in enumerate(layout.batches):
            interrupt.check()
            if all(store.is_done(s.key) or s.source.relpath not in context.infos for s in batch):
                continue
            items: list[WorkItem] = []
            for slot in batch:
                info = context.infos.get(slot.source.relpath)
                if info is None:
                    continue  # unreadable: already in errors.jsonl
                seed = derive_seed(c.seed, slot.source.relpath, slot.k, self.method.name, "generate")
                try:
                    sample = self.method.plan(Sample(source=slot.source, k=slot.k, seed=seed, info=info), context)
                except SkipItem as exc:
                    if commit and not store.is_done(slot.key):
                        error = ErrorRow(slot.source.relpath, slot.k, str(exc), self.method.name)
                        store.commit_output_error(slot.key, error)
                    continue
                if sample.kind != slot.kind:
                    raise RuntimeError(f"{self.method.name} planned {sample.kind}, not {slot.kind}: see generator_kind")
                items.append(WorkItem(slot.key, slot.file_name, sample, wanted=not store.is_done(slot.key)))
            if any(item.wanted for item in items):
                work[number] = Batch(batch[0].size, tuple(items))
        return work

    def _score_chosen_captions(
        self, work: dict[int, Batch], engine: Engine, driver: Worker, cache: Cache
    ) -> dict[int, Batch]:
        """CLIP cosine similarity of captions chosen from elsewhere (e.g. another image's), then ``finalize``."""
        items = [(number, i, item) for number, batch in work.items() for i, item in enumerate(batch.items)]
        unscored = [
            (n, i, item)
            for n, i, item in items
            if item.sample.caption is not None and item.sample.caption.similarity is None
        ]
        if not unscored:
            return work
        scorer_id = self._model_ids(driver)[1]
        keys = [
            cache_key(image=item.sample.info.sha256, scorer=scorer_id, text=item.sample.caption.text)  # type: ignore[union-attr]
            for _, _, item in unscored
        ]
        known = cache.get_many("similarities", keys)
        requests = [
            ScoreRequest(index, item.sample.source.path, item.sample.info.sha256, item.sample.caption.text)  # type: ignore[union-attr]
            for index, ((_, _, item), key) in enumerate(zip(unscored, keys, strict=True))
            if key not in known
        ]
        if requests:
            progress = bar(len(requests), "scoring chosen captions", "img", self.config.quiet)

            def receive(result: tuple[int, float]) -> None:
                index, similarity = result
                known[keys[index]] = similarity
                cache.put_many("similarities", {keys[index]: similarity})
                progress.update(1)

            tasks = [ScoreTask(n, tuple(chunk)) for n, chunk in enumerate(chunks(requests, SCORE_TASK_SIZE))]
            engine.run(tasks, receive)
            progress.close()
            interrupt.check()
        batches = {number: list(batch.items) for number, batch in work.items()}
        for (number, i, item), key in zip(unscored, keys, strict=True):
            batches[number][i] = replace(item, sample=self.method.finalize(item.sample, float(known[key])))
        return {number: Batch(work[number].size, tuple(found)) for number, found in batches.items()}

    # -- 4. execute and write ------------------------------------------------------------------------------
    def _generate(self, layout: Layout, work: dict[int, Batch], engine: Engine, store: RunStore) -> int:
        shards = shards_of(layout, work)
        planned = sum(s.items for s in shards)
        progress = bar(planned, "generating", "img", self.config.quiet)
        with Committer(store, progress) as commit:
            engine.run(shards, self._estimating(commit, shards, planned))
        progress.close()
        return commit.made

    def _estimating(self, commit: Committer, shards: list[Shard], planned: int) -> Callable[[ItemResult], None]:
        """``commit``, which once the first batch is in says how long the planned generation should take (one
        process generating: a Ray pool's first batch says nothing of its other workers)."""
        c = self.config
        first = len(shards[0].batches[0].wanted) if shards else 0
        diffusion = any(runs_diffusion(kind) for kind in self.method.generator_kinds)
        if c.quiet or c.engine != "local" or not diffusion or first >= planned:
            return commit
        hints = [flag for flag, big in (("--steps 20", c.steps > 20), ("--multiplier 1", c.multiplier > 1)) if big]
        started = time.monotonic()
        received = 0

        def receive(result: ItemResult) -> None:
            nonlocal received
            commit(result)
            received += 1
            if received == first:
                seconds = time.monotonic() - started
                estimate_note(seconds, first, planned, "the planned generation", "its first batch", hints, c.quiet)

        return receive

    def _write_originals(self, listing: Listing, infos: dict[str, SourceInfo], store: RunStore) -> None:
        names = output_names(listing.sources, "original")
        for source in listing.sources:
            info = infos.get(source.relpath)
            key = item_key(source.relpath, None, "original")
            if info is None or store.is_done(key):
                continue
            file_name = f"{source.class_name}/{names[source.relpath]}{source.path.suffix.lower()}"
            copy_or_link(source.path, store.out / file_name)
            store.commit_row(
                key,
                {
                    "file_name": file_name,
                    "label": source.class_name,
                    "label_text": source.label,
                    "source": source.origin or source.relpath,
                    "source_sha256": source.origin_sha256 if source.origin else info.sha256,
                    "k": None,
                    "method": "original",
                    "width": info.size[0],
                    "height": info.size[1],
                },
            )


class Committer:
    """The single writer of a run's results: on a thread of its own, each result that is not done yet is
    committed (the image atomically, then its journal line), so the accelerator never waits for the disk.
    A result that comes twice (a retried task) is committed once."""

    def __init__(self, store: RunStore, progress: Any, flush_seconds: float = MANIFEST_FLUSH_SECONDS) -> None:
        self.store = store
        self.progress = progress
        self.flush_seconds = flush_seconds
        self.made = 0
        self._queue: queue.Queue[ItemResult | None] = queue.Queue(maxsize=64)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="sgid-writer", daemon=True)

    def __enter__(self) -> Committer:
        self._thread.start()
        return self

    def __call__(self, result: ItemResult) -> None:
        if self._failure is not None:
            raise self._failure
        self._queue.put(result)

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._failure is not None and exc[0] is None:
            raise self._failure

    def _work(self) -> None:
        last_flush = time.monotonic()
        while (result := self._queue.get()) is not None:
            if self._failure is not None:
                continue  # drain, so the producer never blocks
            try:
                self._commit(result)
                if time.monotonic() - last_flush > self.flush_seconds:
                    self.store.write_manifests()
                    last_flush = time.monotonic()
            except BaseException as exc:  # handed to the producing thread
                self._failure = exc

    def _commit(self, result: ItemResult) -> None:
        store = self.store
        if store.is_done(result.key):
            return
        if result.error is not None:
            store.commit_output_error(result.key, result.error)
        else:
            assert result.row is not None and result.png is not None
            store.commit_image(result.key, result.row, result.png)
            self.made += 1
        self.progress.update(1)


def _write_manifests_after_failure(store: RunStore) -> None:
    """Write the manifests of what is finished, when the run stops early; if even that fails (a full disk),
    the journal still has everything and the next run writes them."""
    try:
        store.write_manifests()
    except OSError:
        pass


def _captions(cached: list[list[Any]]) -> tuple[Caption, ...]:
    return tuple(Caption(text, strategy, similarity) for text, strategy, similarity in cached)


#: Bytes an output stem may take: with ``_<k>.png`` and the temporary file's ``.….tmp-PID`` around it, a file
#: name stays under the 255 bytes file systems allow.
MAX_STEM_BYTES = 200


def output_names(sources: Sequence[Source], method: str) -> dict[str, str]:
    """Output stem per source: ``<path inside the class folder>_<method>``, ``/`` turned into ``__``.

    Two sources differing only by extension (``a.jpg``, ``a.png``) keep the extension to stay distinct. A stem
    longer than :data:`MAX_STEM_BYTES` is cut and ends in ``~`` and 8 hex digits of its source's path; so does
    any stem two sources of a class would otherwise share (``a/b.png`` and ``a__b.png``).
    """

    def stem(source: Source, with_ext: bool) -> str:
        inner = source.relpath.split("/", 1)[1] if "/" in source.relpath else source.relpath
        base = inner if with_ext else inner.rsplit(".", 1)[0]
        return base.replace("/", "__")

    def tagged(base: str, relpath: str, budget: int) -> str:
        cut = base.encode("utf-8")[: max(0, budget - 9)].decode("utf-8", "ignore")
        return f"{cut}~{hashlib.sha256(relpath.encode('utf-8')).hexdigest()[:8]}"

    plain: dict[tuple[str, str], int] = {}
    for s in sources:
        plain[(s.class_name, stem(s, False))] = plain.get((s.class_name, stem(s, False)), 0) + 1
    budget = MAX_STEM_BYTES - len(f"_{method}".encode())
    bases = {s.relpath: stem(s, plain[(s.class_name, stem(s, False))] > 1) for s in sources}
    for s in sources:
        if len(bases[s.relpath].encode("utf-8")) > budget:
            bases[s.relpath] = tagged(bases[s.relpath], s.relpath, budget)
    taken: dict[tuple[str, str], int] = {}
    for s in sources:
        taken[(s.class_name, bases[s.relpath])] = taken.get((s.class_name, bases[s.relpath]), 0) + 1
    for s in sources:
        if taken[(s.class_name, bases[s.relpath])] > 1:
            bases[s.relpath] = tagged(bases[s.relpath], s.relpath, budget)
    return {relpath: f"{base}_{method}" for relpath, base in bases.items()}


def _check_out_dir(config: AugmentConfig) -> None:
    pool = config.pool if "pool" in METHODS.get(config.method).options else None  # else ignored (a warning)
    reads = [("the input folder", config.input_dir), ("the --pool folder", pool)]
    check_out_dir(config.out_dir, reads, command="augment")  # a foreign non-empty OUT: RunStore.check


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _failures(errors: Path) -> int:
    """The rows of a finished run's errors.jsonl that are failures: all but those of empty class folders."""
    if not errors.exists():
        return 0
    try:
        rows = [row for _, row in json_lines(errors, lenient=True)]
    except SgidError:  # not ours to judge here: every line counts, as before
        return _count_lines(errors)
    return sum(map(_is_failure, rows))


def _is_failure(row: object) -> bool:
    """Whether an errors.jsonl row counts as a failure: every row but those of empty class folders."""
    return not (isinstance(row, Mapping) and row.get("reason") == EMPTY_CLASS)


def _check_concepts(concepts: Path, classes: Sequence[str]) -> None:
    """``--concepts`` learned for other classes changes no prompt: say so instead of running as if it did."""
    from sgid.concepts import load_concepts

    learned = sorted(load_concepts(concepts))
    if not set(learned) & set(classes):
        shown = ", ".join(learned[:5]) + (" …" if len(learned) > 5 else "")
        warn(
            f"--concepts {concepts} matches no class of the input (it has concepts for {shown}); every prompt "
            f"keeps its label text"
        )


__all__ = ["Augmenter", "RunSummary", "augment", "output_names"]
