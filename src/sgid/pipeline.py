"""``sgid augment``: read → caption → score → prompt → generate → write.

1. **Read, caption, score.** Every source still needing work is read; when the method uses captions, BLIP
   captions and CLIP similarities are computed (or taken from the cache) in fixed groups of
   ``caption_batch_size`` images over the sorted source list, so they never depend on ``--batch-size`` or on
   what a killed run had finished.
2. **Prepare and plan.** The method prepares what needs the whole dataset (sentences, caption pools, retrieval
   assignments), then plans each (source, k): caption, prompt, weights, guidance, generator.
3. **Score** captions that were chosen from elsewhere (one image and one caption per call, so the result
   cannot depend on a batch).
4. **Generate and write.** Samples of equal generator and generation size are batched; each image is committed
   (atomically, then journaled) as soon as it is made.

``text2img+sgid``-style chains run one method after another, each stage a complete run of its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from sgid import __version__
from sgid.cache import Cache, cache_key
from sgid.config import AugmentConfig
from sgid.dataset import Listing, Source, empty_classes_note, read_label_names, scan
from sgid.errors import SgidError
from sgid.images import ImageError, LoadedImage, generation_size, load_rgb, png_bytes, resize
from sgid.methods import (
    METHODS,
    Method,
    MethodContext,
    Services,
    SkipItem,
    chain_parts,
    denoising_warning,
    option_warnings,
)
from sgid.models.loading import (
    TINY_WARNING,
    ModelChoice,
    default_cache_dir,
    is_tiny,
    resolve_device,
    resolve_models,
)
from sgid.options import augment_signature, resolve_options
from sgid.outdir import check_out_dir
from sgid.progress import bar, note, warn
from sgid.runstore import ERRORS, MANIFEST, RUN_FILE, RunStore, copy_or_link, item_key
from sgid.sample import Sample, SourceInfo
from sgid.seeding import derive_seed
from sgid.stages.bundle import Stages, load_stages
from sgid.stages.caption import Caption
from sgid.versions import package_versions

MANIFEST_FLUSH_SECONDS = 30.0
CPU_STEPS_HINT = 200  # denoising steps (images x steps) above which a CPU run says how to make it small


@dataclass(frozen=True)
class RunSummary:
    out_dir: Path
    generated: int  # images made by this invocation
    already_done: int  # images found finished from an earlier invocation
    failed: int  # rows in errors.jsonl
    total_images: int  # rows in metadata.jsonl
    seconds: float

    def line(self) -> str:
        return (
            f"generated {self.generated}, skipped {self.already_done} already done, failed {self.failed} "
            f"(see {self.out_dir / 'errors.jsonl'}), {self.total_images} images in {self.out_dir} "
            f"[{self.seconds:.1f}s]"
        )


def augment(
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    preset: str | None = None,
    print_summary: bool = False,
    **options: Any,
) -> RunSummary:
    """Augment a labelled image folder (``sgid augment INPUT --out OUT``); returns a :class:`RunSummary`.

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
    for line in option_warnings(config, [k for k, v in settings.items() if v is not None]):
        warn(line)
    summary = _run_stages(config, input_dir, out_dir, preset, settings)
    if print_summary:
        note(summary.line(), config.quiet)
    return summary


augment.__signature__ = augment_signature()  # type: ignore[attr-defined]


def _run_stages(
    config: AugmentConfig, input_dir: str | Path, out_dir: str | Path, preset: str | None, options: dict[str, Any]
) -> RunSummary:
    parts = chain_parts(config.method)
    if len(parts) == 1:
        _warn_denoising(config)
        return Augmenter(config).run()
    # A chain: each method runs on the previous one's output; intermediate runs sit beside OUT. Every stage
    # is configured (and checked) before the first one starts.
    out = Path(out_dir)
    stages: list[AugmentConfig] = []
    current: Path = Path(input_dir)
    for number, part in enumerate(parts, start=1):
        target = out if number == len(parts) else out.parent / f"{out.name}.stages" / f"{number}-{part}"
        stage = AugmentConfig.build(current, target, preset=preset, **{**options, "method": part})
        stages.append(replace(stage, multiplier=1) if number > 1 else stage)  # one per earlier augmentation
        _warn_denoising(stages[-1])
        current = target
    return [Augmenter(stage).run() for stage in stages][-1]


def _warn_denoising(config: AugmentConfig) -> None:
    line = denoising_warning(config)
    if line:
        warn(f"{config.method}: {line}")


class Augmenter:
    def __init__(self, config: AugmentConfig, stages: Stages | None = None) -> None:
        self.config = config
        self.method: Method = METHODS.get(config.method)(config)
        self._stages = stages
        self.cache_dir = config.cache_dir or default_cache_dir()

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        c = self.config
        started = time.monotonic()
        # 1. Check inputs (no model is loaded before this passes)
        listing = self._scan()
        if listing.empty:  # listed in errors.jsonl with the other skipped inputs
            warn(empty_classes_note(c.input_dir, listing.empty))
        if c.concepts is not None:
            _check_concepts(c.concepts, listing.classes)
        _check_out_dir(c)
        choice = resolve_models(
            c.models,
            cache_dir=self.cache_dir,
            captioner=c.captioner,
            scorer=c.scorer,
            generator=c.sd_model,
            instruct=c.instruct_model,
            text=c.text_model,
            sd_config=c.sd_config,
        )
        store = RunStore(c.out_dir, self._run_info(choice), c.identity(), overwrite=c.overwrite)
        store.check()
        resumed = (c.out_dir / RUN_FILE).exists() and not c.overwrite
        done, listed = store.peek() if resumed else (set(), False)
        finished = self._finished_run(listing, done, listed, started)
        if finished is not None:  # a rerun of a finished run: no model is loaded
            note(f"nothing to do: every image of this run is already in {c.out_dir}", c.quiet)
            return finished
        self._announce(listing, done, choice)
        # 2. Load models, failing before any work when weights are missing
        stages = self._stages or load_stages(c, choice, self.method)
        if is_tiny(choice):
            note(TINY_WARNING, c.quiet)
        cache = Cache(self.cache_dir / "cache.sqlite" if c.caption_cache else None)
        with store.session():
            done_before = len(store.rows)
            store.input_errors = [{"source": rel, "k": None, "reason": why} for rel, why in listing.skipped]
            # 3. Read, caption and score
            infos, read_errors = self._read_and_caption(listing, store, stages, cache)
            store.input_errors += read_errors
            # 4. Prepare, plan, score chosen captions
            context = MethodContext(
                config=c,
                sources=listing.sources,
                infos=infos,
                labels=listing.labels,
                prompt_labels={**listing.labels, **(stages.concept_tokens or {})},
            )
            context = replace(context, prepared=self.method.prepare(context, self._services(stages)))
            store.input_errors += context.prepared.get("notes", [])
            pending = self._plan(listing, context, store)
            pending = self._score_chosen_captions(pending, stages, cache)
            # 5. Generate and write
            generated = self._generate(listing, pending, store, stages)
            if c.include_originals:
                self._write_originals(listing, infos, store)
            store.write_manifests()
            failed = len(store.input_errors) + len(store.output_errors)
            total = len(store.rows)
        cache.close()
        return RunSummary(c.out_dir, generated, done_before, failed, total, time.monotonic() - started)

    def _finished_run(self, listing: Listing, done: set[str], listed: bool, started: float) -> RunSummary | None:
        """The summary of a run that has nothing left to do (every item finished and listed in metadata.jsonl,
        every source not finished unreadable), else None."""
        c = self.config
        if not listed:
            return None
        for source in listing.sources:
            keys = [item_key(source.relpath, k, self.method.name) for k in range(c.multiplier)]
            if c.include_originals:
                keys.append(item_key(source.relpath, None, "original"))
            if all(key in done for key in keys):
                continue
            try:
                load_rgb(source.path, max_pixels=c.max_pixels, min_side=c.min_side)
                return None  # readable and not finished: work to do
            except ImageError:
                continue  # listed in errors.jsonl by the run that found it
        total = _count_lines(c.out_dir / MANIFEST)
        failed = _count_lines(c.out_dir / ERRORS)
        return RunSummary(c.out_dir, 0, total, failed, total, time.monotonic() - started)

    def _announce(self, listing: Listing, done: set[str], choice: ModelChoice) -> None:
        """The work about to start, and on a CPU with real models the flags that make it small."""
        c = self.config
        if c.quiet:
            return
        keys = (item_key(s.relpath, k, self.method.name) for s in listing.sources for k in range(c.multiplier))
        items = sum(key not in done for key in keys)
        if "retrieval" in self.method.generator_kinds:
            note(f"planned: {items} image(s) to retrieve with {self.method.name}")
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

    def _scan(self) -> Listing:
        c = self.config
        names = read_label_names(c.label_names) if c.label_names else None
        return scan(c.input_dir, names)

    def _run_info(self, choice: ModelChoice) -> dict[str, Any]:
        return {
            "sgid_version": __version__,
            "config": self.config.to_dict(),
            "models": {role: ref.name for role, ref in vars(choice).items() if ref is not None},
            "versions": package_versions(),
            "command": " ".join(["sgid", *sys.argv[1:]]) if sys.argv and "sgid" in sys.argv[0] else None,
        }

    def _services(self, stages: Stages) -> Services:
        return Services(text=stages.text, scorer=stages.scorer, scorer_id=stages.scorer_id, cache_dir=self.cache_dir)

    # -- 1. read, caption, score ---------------------------------------------------------------------------
    def _sources_to_read(self, listing: Listing, store: RunStore) -> set[str]:
        if self.method.needs_all_sources():
            return {s.relpath for s in listing.sources}
        k_range = range(self.config.multiplier)
        return {
            s.relpath
            for s in listing.sources
            if not all(store.is_done(item_key(s.relpath, k, self.method.name)) for k in k_range)
        }

    def _read_and_caption(
        self, listing: Listing, store: RunStore, stages: Stages, cache: Cache
    ) -> tuple[dict[str, SourceInfo], list[dict[str, Any]]]:
        c = self.config
        wanted = self._sources_to_read(listing, store)
        infos: dict[str, SourceInfo] = {}
        errors: list[dict[str, Any]] = []
        captioning = self.method.needs_captions()
        progress = bar(len(wanted), "reading and captioning" if captioning else "reading", "img", c.quiet)
        # Fixed groups over the full, sorted source list: their composition never depends on what is done.
        for group in _chunks(list(listing.sources), c.caption_batch_size):
            members = [s for s in group if s.relpath in wanted]
            if not members:
                continue
            loaded: list[tuple[Source, LoadedImage]] = []
            for source in members:
                try:
                    loaded.append((source, load_rgb(source.path, max_pixels=c.max_pixels, min_side=c.min_side)))
                except ImageError as exc:
                    errors.append({"source": source.relpath, "k": None, "reason": str(exc)})
            captions = self._captions(loaded, stages, cache) if captioning and loaded else {}
            for source, image in loaded:
                infos[source.relpath] = SourceInfo(
                    sha256=image.sha256, size=image.image.size, captions=captions.get(source.relpath, ())
                )
            progress.update(len(members))
        progress.close()
        return infos, errors

    def _captions(
        self, loaded: list[tuple[Source, LoadedImage]], stages: Stages, cache: Cache
    ) -> dict[str, tuple[Caption, ...]]:
        """Captions with similarities for one group: from the cache, or computed for the group at once."""
        c = self.config
        assert stages.captioner is not None and stages.scorer is not None
        seeds = {s.relpath: derive_seed(c.seed, s.relpath, "captions") for s, _ in loaded}
        keys = {
            s.relpath: cache_key(
                image=img.sha256,
                model=stages.captioner_id,
                settings=vars(c.captions),
                seed=seeds[s.relpath],
                scorer=stages.scorer_id,
                similarity=c.similarity,
            )
            for s, img in loaded
        }
        cached = cache.get_many("captions", keys.values())
        missing = [(s, img) for s, img in loaded if keys[s.relpath] not in cached]
        if missing:
            texts = stages.captioner([img.image for _, img in missing], [seeds[s.relpath] for s, _ in missing])
            sims = stages.scorer.caption_similarities(
                [img.image for _, img in missing], [[t.text for t in group] for group in texts], c.similarity
            )
            fresh = {
                keys[s.relpath]: [[t.text, t.strategy, sim] for t, sim in zip(group, scores, strict=True)]
                for (s, _), group, scores in zip(missing, texts, sims, strict=True)
            }
            cache.put_many("captions", fresh)
            cached.update(fresh)
        return {
            s.relpath: tuple(Caption(text, strategy, sim) for text, strategy, sim in cached[keys[s.relpath]])
            for s, _ in loaded
        }

    # -- 2. plan, 3. score chosen captions -----------------------------------------------------------------
    def _plan(self, listing: Listing, context: MethodContext, store: RunStore) -> list[Sample]:
        c = self.config
        samples = []
        for source in listing.sources:
            info = context.infos.get(source.relpath)
            if info is None:
                continue  # unreadable: already in errors.jsonl
            for k in range(c.multiplier):
                key = item_key(source.relpath, k, self.method.name)
                if store.is_done(key):
                    continue
                seed = derive_seed(c.seed, source.relpath, k, self.method.name, "generate")
                try:
                    samples.append(self.method.plan(Sample(source=source, k=k, seed=seed, info=info), context))
                except SkipItem as exc:
                    store.commit_output_error(key, self._error_row(source, k, str(exc)))
        return samples

    def _error_row(self, source: Source, k: int, reason: str) -> dict[str, Any]:
        return {"source": source.relpath, "k": k, "method": self.method.name, "reason": reason}

    def _score_chosen_captions(self, samples: list[Sample], stages: Stages, cache: Cache) -> list[Sample]:
        """CLIP cosine similarity of captions chosen from elsewhere (e.g. another image's), then ``finalize``."""
        unscored = [i for i, s in enumerate(samples) if s.caption is not None and s.caption.similarity is None]
        if not unscored:
            return samples
        assert stages.scorer is not None
        keys = {
            i: cache_key(image=samples[i].info.sha256, scorer=stages.scorer_id, text=samples[i].caption.text)  # type: ignore[union-attr]
            for i in unscored
        }
        known = cache.get_many("similarities", keys.values())
        progress = bar(len(unscored), "scoring chosen captions", "img", self.config.quiet)
        for i in unscored:
            if keys[i] not in known:
                image = load_rgb(samples[i].source.path, max_pixels=self.config.max_pixels).image
                # one image and one caption per call: the value cannot depend on what shares a batch
                (similarity,) = stages.scorer.caption_similarities([image], [[samples[i].caption.text]])[0]  # type: ignore[union-attr]
                known[keys[i]] = similarity
                cache.put_many("similarities", {keys[i]: similarity})
            samples[i] = self.method.finalize(samples[i], float(known[keys[i]]))
            progress.update(1)
        progress.close()
        return samples

    # -- 4. generate and write -----------------------------------------------------------------------------
    def _generate(self, listing: Listing, pending: list[Sample], store: RunStore, stages: Stages) -> int:
        c = self.config
        names = output_names(listing.sources, self.method.name)
        progress = bar(len(pending), "generating", "img", c.quiet)
        last_flush = time.monotonic()
        made = 0
        for batch in self._batches(pending, stages):
            size = self._target_size(batch[0], stages)
            outputs = stages.generate(batch, self._pixels(batch, size), size)
            for sample, (image, flagged) in zip(batch, outputs, strict=True):
                key = item_key(sample.source.relpath, sample.k, self.method.name)
                if flagged:
                    reason = "the safety checker flagged the generated image (blacked out); not kept"
                    store.commit_output_error(key, self._error_row(sample.source, sample.k, reason))
                    continue
                produced_size = image.size
                if self.method.resize_to_source and sample.info is not None and not c.keep_generation_size:
                    image = resize(image, sample.info.size)
                file_name = f"{sample.source.class_name}/{names[sample.source.relpath]}_{sample.k}.png"
                row = self.manifest_row(sample, stages, file_name, image.size, produced_size)
                store.commit_image(key, row, png_bytes(image))
                made += 1
            progress.update(len(batch))
            if time.monotonic() - last_flush > MANIFEST_FLUSH_SECONDS:
                store.write_manifests()
                last_flush = time.monotonic()
        progress.close()
        return made

    def _target_size(self, sample: Sample, stages: Stages) -> tuple[int, int]:
        resolution = stages.resolution(sample.kind)
        if resolution is None:  # not generated (retrieval): sizes are the images' own
            return (0, 0)
        assert sample.info is not None
        return generation_size(sample.info.size, resolution, stages.size_multiple(sample.kind))

    def _batches(self, samples: Sequence[Sample], stages: Stages) -> Iterator[list[Sample]]:
        """Batches of up to ``batch_size`` samples sharing generator kind and generation size."""
        groups: dict[tuple[str, tuple[int, int]], list[Sample]] = {}
        for sample in samples:
            groups.setdefault((sample.kind, self._target_size(sample, stages)), []).append(sample)
        for key in sorted(groups):
            yield from _chunks(groups[key], self.config.batch_size)

    def _pixels(self, batch: list[Sample], size: tuple[int, int]) -> list[Image.Image] | None:
        if not self.method.uses_source_pixels:
            return None
        images = []
        for sample in batch:
            loaded = load_rgb(sample.source.path, max_pixels=self.config.max_pixels, min_side=self.config.min_side)
            assert sample.info is not None
            if loaded.sha256 != sample.info.sha256:
                raise SgidError(f"{sample.source.relpath} changed while the run was going; rerun to pick it up")
            images.append(resize(loaded.image, size))
        return images

    def manifest_row(
        self, sample: Sample, stages: Stages, file_name: str, size: tuple[int, int], produced: tuple[int, int]
    ) -> dict[str, Any]:
        c = self.config
        info, source = sample.info, sample.source
        captions = info.captions if info else ()
        row: dict[str, Any] = {
            "file_name": file_name,
            "label": source.class_name,
            "label_text": source.label,
            # provenance: the real image this one descends from, also through chained methods
            "source": source.origin or source.relpath,
            "source_sha256": source.origin_sha256 if source.origin else (info.sha256 if info else None),
            "k": sample.k,
            "method": self.method.name,
            "seed": sample.seed,
            "run_seed": c.seed,
            "captions": [{"text": t.text, "strategy": t.strategy, "similarity": t.similarity} for t in captions],
            "caption": sample.caption.text if sample.caption else None,
            "caption_strategy": sample.caption.strategy if sample.caption else None,
            "similarity": sample.similarity,
            "similarity_mode": (c.similarity if sample.caption.origin is None else "cosine")
            if sample.caption
            else None,
            "prompt": sample.prompt.text if sample.prompt else None,
            "prompt_mode": c.prompt if self.method.uses_prompt_mode else None,
            "negative_prompt": sample.negative_prompt if sample.prompt else None,
            "prompt_weighting": c.prompt_weighting,
            "label_weight": sample.label_weight,
            "caption_weight": sample.caption_weight,
            "guidance_scale": sample.guidance_scale,
            "guidance_map": c.guidance_map.describe() if sample.guidance_scale is not None else None,
            "diffusers_guidance": c.diffusers_guidance,
            "noise_rate": sample.strength,
            "steps": c.steps if sample.kind != "retrieval" else None,
            "denoising_steps": _denoising_steps(sample, c.steps),
            "width": size[0],
            "height": size[1],
            "generation_width": produced[0],
            "generation_height": produced[1],
            "captioner_model": stages.captioner_id if captions else None,
            "scorer_model": stages.scorer_id if captions or sample.caption else None,
            "generator_model": stages.generator_id(sample.kind),
            "safety_checker": c.safety_checker,
        }
        if source.origin is not None or source.chain:  # chained onto an earlier run
            row.update(
                parent=source.relpath,
                parent_run=str(Path(c.input_dir).resolve()),
                parent_sha256=info.sha256 if info else None,
            )
            row["chain"] = [*source.chain, self.method.name]
        if c.concepts is not None:
            row["concept_token"] = (stages.concept_tokens or {}).get(source.class_name)
        if c.lora is not None:
            row.update(lora=c.lora, lora_scale=c.lora_scale)
        row.update(self.method.manifest_fields(sample))
        return row

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


def _denoising_steps(sample: Sample, steps: int) -> int | None:
    if sample.kind == "retrieval":
        return None
    return int(steps * sample.strength) if sample.strength is not None else steps


def output_names(sources: Sequence[Source], method: str) -> dict[str, str]:
    """Output stem per source: ``<path inside the class folder>_<method>``, ``/`` turned into ``__``.

    Two sources differing only by extension (``a.jpg``, ``a.png``) keep the extension to stay distinct.
    """

    def stem(source: Source, with_ext: bool) -> str:
        inner = source.relpath.split("/", 1)[1] if "/" in source.relpath else source.relpath
        base = inner if with_ext else inner.rsplit(".", 1)[0]
        return base.replace("/", "__")

    plain: dict[tuple[str, str], int] = {}
    for s in sources:
        plain[(s.class_name, stem(s, False))] = plain.get((s.class_name, stem(s, False)), 0) + 1
    return {s.relpath: f"{stem(s, plain[(s.class_name, stem(s, False))] > 1)}_{method}" for s in sources}


def _check_out_dir(config: AugmentConfig) -> None:
    pool = config.pool if "pool" in METHODS.get(config.method).options else None  # else ignored (a warning)
    reads = [("the input folder", config.input_dir), ("the --pool folder", pool)]
    check_out_dir(config.out_dir, reads, command="augment")  # a foreign non-empty OUT: RunStore.check


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


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


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
