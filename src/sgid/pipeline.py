"""``sgid augment``: read → caption → score → prompt → generate → write.

Phase 1 reads every source and captions and scores it (cached, in fixed groups of ``caption_batch_size``
images over the sorted source list, so captions never depend on ``--batch-size`` or on what a killed run had
finished). Phase 2 plans each (source, k) sample with the method, batches samples of equal generation size
and generates them, committing each image as it is done.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sgid import __version__
from sgid.cache import Cache, cache_key
from sgid.config import AugmentConfig
from sgid.dataset import Listing, Source, read_label_names, scan
from sgid.errors import SgidError
from sgid.images import ImageError, LoadedImage, generation_size, load_rgb, png_bytes, resize
from sgid.methods import METHODS, Method, MethodContext
from sgid.models.loading import TINY_WARNING, ModelChoice, default_cache_dir, is_tiny, resolve_models
from sgid.progress import bar, note
from sgid.runstore import RunStore, copy_or_link, item_key
from sgid.sample import Sample, SourceInfo
from sgid.seeding import derive_seed
from sgid.stages.bundle import Stages, load_stages
from sgid.stages.caption import Caption

MANIFEST_FLUSH_SECONDS = 30.0


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


def augment(input_dir: str | Path, out_dir: str | Path, *, preset: str | None = None, **options: Any) -> RunSummary:
    """Python API of ``sgid augment``: the same options as the command line, with underscores.

    >>> augment("data/train", "data/sgid", models="tiny", noise=0.5, multiplier=2)  # doctest: +SKIP
    """
    return Augmenter(AugmentConfig.build(input_dir, out_dir, preset=preset, **options)).run()


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
        _check_out_dir(c, listing)
        choice = resolve_models(
            c.models,
            cache_dir=self.cache_dir,
            captioner=c.captioner,
            scorer=c.scorer,
            generator=c.sd_model,
            instruct=c.instruct_model,
        )
        store = RunStore(c.out_dir, self._run_info(choice), c.identity(), overwrite=c.overwrite)
        store.check()
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
            # 4. Plan and generate
            context = MethodContext(config=c, infos=infos, labels=listing.labels)
            generated = self._generate(listing, infos, context, store, stages)
            if c.include_originals:
                self._write_originals(listing, infos, store)
            # 5. Write the manifests
            store.write_manifests()
            failed = len(store.input_errors) + len(store.output_errors)
            total = len(store.rows)
        cache.close()
        summary = RunSummary(c.out_dir, generated, done_before, failed, total, time.monotonic() - started)
        note(summary.line(), c.quiet)
        return summary

    def _scan(self) -> Listing:
        c = self.config
        names = read_label_names(c.label_names) if c.label_names else None
        return scan(c.input_dir, names)

    def _run_info(self, choice: ModelChoice) -> dict[str, Any]:
        return {
            "sgid_version": __version__,
            "config": self.config.to_dict(),
            "models": {role: ref.name for role, ref in vars(choice).items()},
            "versions": package_versions(),
            "command": " ".join(["sgid", *sys.argv[1:]]) if sys.argv and "sgid" in sys.argv[0] else None,
        }

    # -- phase 1: read, caption, score ---------------------------------------------------------------------
    def _sources_to_read(self, listing: Listing, store: RunStore) -> list[Source]:
        if not self.method.uses_source_pixels and not self.method.needs_captions():
            return []
        if self.method.needs_all_captions():
            return list(listing.sources)
        k_range = range(self.config.multiplier)
        return [
            s
            for s in listing.sources
            if not all(store.is_done(item_key(s.relpath, k, self.method.name)) for k in k_range)
        ]

    def _read_and_caption(
        self, listing: Listing, store: RunStore, stages: Stages, cache: Cache
    ) -> tuple[dict[str, SourceInfo], list[dict[str, Any]]]:
        c = self.config
        wanted = {s.relpath for s in self._sources_to_read(listing, store)}
        infos: dict[str, SourceInfo] = {}
        errors: list[dict[str, Any]] = []
        captioning = self.method.needs_captions()
        progress = bar(len(wanted), "reading and captioning" if captioning else "reading", "img", c.quiet)
        # Fixed groups over the full, sorted source list: composition never depends on what is done.
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
        """Captions with similarities for one group, from the cache or computed for the whole group at once."""
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

    # -- phase 2: plan and generate ------------------------------------------------------------------------
    def _pending(
        self, listing: Listing, infos: dict[str, SourceInfo], context: MethodContext, store: RunStore
    ) -> list[Sample]:
        c = self.config
        samples = []
        for source in listing.sources:
            info = infos.get(source.relpath)
            if self.method.uses_source_pixels and info is None:
                continue  # unreadable: already in errors
            for k in range(c.multiplier):
                if store.is_done(item_key(source.relpath, k, self.method.name)):
                    continue
                seed = derive_seed(c.seed, source.relpath, k, self.method.name, "generate")
                samples.append(self.method.plan(Sample(source=source, k=k, seed=seed, info=info), context))
        return samples

    def _generate(
        self,
        listing: Listing,
        infos: dict[str, SourceInfo],
        context: MethodContext,
        store: RunStore,
        stages: Stages,
    ) -> int:
        c = self.config
        pending = self._pending(listing, infos, context, store)
        names = output_names(listing.sources, self.method.name)
        progress = bar(len(pending), "generating", "img", c.quiet)
        last_flush = time.monotonic()
        made = 0
        for batch in self._batches(pending, stages):
            outputs = stages.generate(batch, self._pixels(batch, stages))
            for sample, (image, flagged) in zip(batch, outputs, strict=True):
                key = item_key(sample.source.relpath, sample.k, self.method.name)
                if flagged:
                    store.commit_output_error(
                        key,
                        {
                            "source": sample.source.relpath,
                            "k": sample.k,
                            "method": self.method.name,
                            "reason": "the safety checker flagged the generated image (blacked out); not kept",
                        },
                    )
                    continue
                generated_size = image.size
                if sample.info is not None and not c.keep_generation_size:
                    image = resize(image, sample.info.size)
                file_name = f"{sample.source.class_name}/{names[sample.source.relpath]}_{sample.k}.png"
                row = self.manifest_row(sample, stages, file_name, image.size, generated_size)
                store.commit_image(key, row, png_bytes(image))
                made += 1
            progress.update(len(batch))
            if time.monotonic() - last_flush > MANIFEST_FLUSH_SECONDS:
                store.write_manifests()
                last_flush = time.monotonic()
        progress.close()
        return made

    def _target_size(self, sample: Sample, stages: Stages) -> tuple[int, int]:
        if sample.info is None:
            return (stages.resolution(sample.kind), stages.resolution(sample.kind))
        return generation_size(sample.info.size, stages.resolution(sample.kind), stages.size_multiple(sample.kind))

    def _batches(self, samples: Sequence[Sample], stages: Stages) -> Iterator[list[Sample]]:
        """Batches of up to ``batch_size`` samples sharing generator kind and generation size."""
        groups: dict[tuple[str, tuple[int, int]], list[Sample]] = {}
        for sample in samples:
            groups.setdefault((sample.kind, self._target_size(sample, stages)), []).append(sample)
        for key in sorted(groups):
            yield from _chunks(groups[key], self.config.batch_size)

    def _pixels(self, batch: list[Sample], stages: Stages) -> list[Image.Image] | None:
        if not self.method.uses_source_pixels:
            return None
        images = []
        for sample in batch:
            loaded = load_rgb(sample.source.path, max_pixels=self.config.max_pixels, min_side=self.config.min_side)
            assert sample.info is not None
            if loaded.sha256 != sample.info.sha256:
                raise SgidError(f"{sample.source.relpath} changed while the run was going; rerun to pick it up")
            images.append(resize(loaded.image, self._target_size(sample, stages)))
        return images

    def manifest_row(
        self,
        sample: Sample,
        stages: Stages,
        file_name: str,
        size: tuple[int, int],
        generated_size: tuple[int, int],
    ) -> dict[str, Any]:
        c = self.config
        info = sample.info
        row: dict[str, Any] = {
            "file_name": file_name,
            "label": sample.source.class_name,
            "label_text": sample.source.label,
            "source": sample.source.relpath,
            "source_sha256": info.sha256 if info else None,
            "k": sample.k,
            "method": self.method.name,
            "seed": sample.seed,
            "run_seed": c.seed,
            "captions": [
                {"text": t.text, "strategy": t.strategy, "similarity": t.similarity}
                for t in (info.captions if info else ())
            ],
            "caption": sample.caption.text if sample.caption else None,
            "caption_strategy": c.caption if sample.caption else None,
            "similarity": sample.similarity,
            "similarity_mode": c.similarity if sample.caption else None,
            "prompt": sample.prompt.text if sample.prompt else None,
            "prompt_mode": c.prompt,
            "negative_prompt": sample.negative_prompt,
            "prompt_weighting": c.prompt_weighting,
            "label_weight": sample.label_weight,
            "caption_weight": sample.caption_weight,
            "guidance_scale": sample.guidance_scale,
            "guidance_map": c.guidance_map.describe(),
            "diffusers_guidance": c.diffusers_guidance,
            "noise_rate": sample.strength,
            "steps": c.steps,
            "denoising_steps": int(c.steps * sample.strength) if sample.strength is not None else c.steps,
            "width": size[0],
            "height": size[1],
            "generation_width": generated_size[0],
            "generation_height": generated_size[1],
            "captioner_model": stages.captioner_id if sample.caption else None,
            "scorer_model": stages.scorer_id if sample.caption else None,
            "generator_model": stages.generator_id(sample.kind),
            "safety_checker": c.safety_checker,
        }
        row.update(self.method.manifest_fields(sample))
        return row

    def _write_originals(self, listing: Listing, infos: dict[str, SourceInfo], store: RunStore) -> None:
        names = output_names(listing.sources, "original")
        for source in listing.sources:
            info = infos.get(source.relpath)
            key = item_key(source.relpath, None, "original")
            if info is None or store.is_done(key):
                continue
            suffix = source.path.suffix.lower()
            file_name = f"{source.class_name}/{names[source.relpath]}{suffix}"
            copy_or_link(source.path, store.out / file_name)
            store.commit_row(
                key,
                {
                    "file_name": file_name,
                    "label": source.class_name,
                    "label_text": source.label,
                    "source": source.relpath,
                    "source_sha256": info.sha256,
                    "k": None,
                    "method": "original",
                    "width": info.size[0],
                    "height": info.size[1],
                },
            )


def output_names(sources: Sequence[Source], method: str) -> dict[str, str]:
    """Output stem per source: ``<path inside the class folder>_<method>``, ``/`` turned into ``__``.

    Two sources differing only by extension (``a.jpg``, ``a.png``) keep the extension to stay distinct.
    """

    def stem(source: Source, with_ext: bool) -> str:
        inner = source.relpath.split("/", 1)[1]
        base = inner if with_ext else inner.rsplit(".", 1)[0]
        return base.replace("/", "__")

    plain: dict[tuple[str, str], int] = {}
    for s in sources:
        plain[(s.class_name, stem(s, False))] = plain.get((s.class_name, stem(s, False)), 0) + 1
    return {s.relpath: f"{stem(s, plain[(s.class_name, stem(s, False))] > 1)}_{method}" for s in sources}


def _check_out_dir(config: AugmentConfig, listing: Listing) -> None:
    inp, out = Path(config.input_dir).resolve(), Path(config.out_dir).resolve()
    if out == inp or inp in out.parents:
        raise SgidError(f"--out {config.out_dir} is inside the input folder; its images would become inputs")
    if out in inp.parents:
        raise SgidError(f"--out {config.out_dir} contains the input folder; choose a separate folder")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "diffusers", "transformers", "safetensors", "pillow", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _chunks(items: list, size: int) -> Iterator[list]:  # type: ignore[type-arg]
    for start in range(0, len(items), size):
        yield items[start : start + size]
