"""Execute: tasks in, results out. A :class:`Worker` holds the models (loaded once per process, when the first
task that needs them arrives) and turns each task of the plan into results:

* a :class:`~sgid.plan.CaptionTask` into ``(relpath, captions)`` pairs,
* a :class:`~sgid.plan.ScoreTask` into ``(index, similarity)`` pairs,
* a :class:`~sgid.plan.Shard` into one :class:`ItemResult` per wanted item: the PNG bytes and the manifest
  row, or why no image was kept.

A worker never touches the run folder: the driver's single writer commits what workers return, so every
engine (one process, or Ray actors on other machines) produces the same folder. While a batch is on the
accelerator, the next batch's images are read, decoded and resized on one thread and the previous batch's
images are resized back and PNG-encoded on others.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from sgid import interrupt
from sgid.config import AugmentConfig
from sgid.errors import SgidError
from sgid.images import ImageError, LoadedImage, load_rgb, png_bytes, resize
from sgid.manifest import ErrorRow, ManifestRow
from sgid.methods import METHODS, Method
from sgid.models.loading import ModelChoice
from sgid.plan import Batch, Calibration, CaptionTask, ScoreTask, Shard, Task, Timing, WorkItem
from sgid.sample import COPY, Sample
from sgid.seeding import derive_seed
from sgid.stages.bundle import PARTS, Outputs, Stages, load_stages, runs_diffusion

FLAGGED = "the safety checker flagged the generated image (blacked out); not kept"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to load its models (picklable: it travels to Ray actors)."""

    config: AugmentConfig
    choice: ModelChoice
    device: str | None = None  # None: the configured --device; Ray GPU actors say "cuda"


@dataclass(frozen=True)
class ItemResult:
    """What executing one item produced: an image and its row, or an error row."""

    key: str
    row: ManifestRow | None = None
    png: bytes | None = None
    error: ErrorRow | None = None


class Worker:
    """Runs tasks with models loaded once; the same code behind every engine."""

    def __init__(self, spec: WorkerSpec, stages: Stages | None = None) -> None:
        self.spec = spec
        self.config = spec.config
        self.method: Method = METHODS.get(spec.config.method)(spec.config)
        self._stages = stages
        self._loaded: set[str] = set(PARTS) if stages is not None else set()

    def stages(self, *parts: str) -> Stages:
        """The stages, with ``parts`` loaded (see :data:`sgid.stages.bundle.PARTS`)."""
        missing = tuple(p for p in parts if p not in self._loaded)
        if missing or self._stages is None:
            self._stages = load_stages(
                self.config, self.spec.choice, self.method, missing, device=self.spec.device, into=self._stages
            )
            self._loaded.update(missing)
        return self._stages

    @property
    def loaded_stages(self) -> Stages | None:
        """The stages loaded so far (None before the first task)."""
        return self._stages

    def run(self, task: Task) -> Iterator[Any]:
        if isinstance(task, Shard):
            return self.generate(task)
        if isinstance(task, CaptionTask):
            return self.caption(task)
        if isinstance(task, ScoreTask):
            return self.score(task)
        if isinstance(task, Calibration):
            return self.calibrate(task)
        raise TypeError(f"not a task: {task!r}")

    def calibrate(self, task: Calibration) -> Iterator[Any]:
        """The task twice, timed; the second run's results, then the :class:`~sgid.plan.Timing`."""
        started = time.perf_counter()
        for _ in self.run(task.task):
            pass
        first = time.perf_counter() - started
        started = time.perf_counter()
        results = list(self.run(task.task))
        second = time.perf_counter() - started
        yield from results
        yield Timing(first, second, task.items)

    # -- captions and scores --------------------------------------------------------------------------------
    def _load(self, path: Any, sha256: str, relpath: str) -> Image.Image:
        c = self.config
        try:
            loaded = load_rgb(path, max_pixels=c.max_pixels, min_side=c.min_side)
        except ImageError as exc:
            raise SgidError(f"{relpath} became unreadable while the run was going ({exc})") from None
        _same_file(loaded, sha256, relpath)
        return loaded.image

    def caption(self, task: CaptionTask) -> Iterator[tuple[str, list[list[Any]]]]:
        """BLIP captions of the whole group at once, then their CLIP similarities (as the cache stores them)."""
        stages = self.stages("captioner", "scorer")
        assert stages.captioner is not None and stages.scorer is not None
        images = [self._load(s.path, s.sha256, s.relpath) for s in task.sources]
        texts = stages.captioner(images, [s.seed for s in task.sources])
        sims = stages.scorer.caption_similarities(
            images, [[t.text for t in group] for group in texts], self.config.similarity
        )
        for source, group, scores in zip(task.sources, texts, sims, strict=True):
            yield source.relpath, [[t.text, t.strategy, sim] for t, sim in zip(group, scores, strict=True)]

    def score(self, task: ScoreTask) -> Iterator[tuple[int, float]]:
        stages = self.stages("scorer")
        assert stages.scorer is not None
        for request in task.requests:
            image = self._load(request.path, request.sha256, str(request.path))
            # one image and one caption per call: the value cannot depend on what shares a batch
            (similarity,) = stages.scorer.caption_similarities([image], [[request.text]])[0]
            yield request.index, float(similarity)

    # -- generation -----------------------------------------------------------------------------------------
    def generate(self, shard: Shard) -> Iterator[ItemResult]:
        """Every batch of the shard in order; reading ahead and encoding behind on threads."""
        stages = self.stages("generation")
        with (
            ThreadPoolExecutor(1, thread_name_prefix="sgid-read") as reader,
            ThreadPoolExecutor(2, thread_name_prefix="sgid-encode") as encoder,
        ):
            batches = shard.batches
            pixels = reader.submit(self._pixels, batches[0]) if batches else None
            finishing: collections.deque[Future[list[ItemResult]]] = collections.deque()
            for number, batch in enumerate(batches):
                if interrupt.stop_requested():
                    break  # in the driver only (sgid.interrupt): finish the batches in flight, start no other
                assert pixels is not None
                ready = pixels.result()
                if number + 1 < len(batches):
                    pixels = reader.submit(self._pixels, batches[number + 1])
                flagged: list[tuple[int, ...]]
                if batch.kind == COPY:
                    outputs, flagged = self._copies(batch), [()] * len(batch.items)
                else:
                    batch, outputs, flagged = self._generate(stages, batch, ready)
                finishing.append(encoder.submit(self._finish, batch, outputs, stages, flagged))
                while finishing and finishing[0].done():
                    yield from finishing.popleft().result()
            while finishing:
                yield from finishing.popleft().result()

    def _generate(
        self, stages: Stages, batch: Batch, pixels: list[Image.Image] | None
    ) -> tuple[Batch, Outputs, list[tuple[int, ...]]]:
        """Generate a batch; with ``--on-flagged retry``, the items the safety checker flags are made again (as a
        batch of their own, every flagged item of the batch, so that the result never depends on what was done
        before) with the next derived seed, up to ``--flagged-tries`` tries in all. Returns the batch (the items'
        final seeds), the outputs and, per item, the seeds that were flagged."""
        outputs = stages.generate(batch.samples, pixels, batch.size)
        flagged: list[tuple[int, ...]] = [()] * len(batch.items)
        if self.config.on_flagged != "retry":
            return batch, outputs, flagged
        items = list(batch.items)
        for attempt in range(1, self.config.flagged_tries):
            again = [i for i, (_, is_flagged) in enumerate(outputs) if is_flagged]
            if not again:
                break
            for i in again:
                flagged[i] = (*flagged[i], items[i].sample.seed)
                seed = derive_seed(batch.items[i].sample.seed, "flagged", attempt)
                items[i] = replace(items[i], sample=replace(items[i].sample, seed=seed))
            retry = stages.generate([items[i].sample for i in again], _pick(pixels, again), batch.size)
            for i, output in zip(again, retry, strict=True):
                outputs[i] = output
        for i, (_, is_flagged) in enumerate(outputs):
            if is_flagged:  # the last try too
                flagged[i] = (*flagged[i], items[i].sample.seed)
        return replace(batch, items=tuple(items)), outputs, flagged

    def _copies(self, batch: Batch) -> list[tuple[Image.Image, bool]]:
        """The images a batch of copy items copies (retrieval: the pool images planned for them)."""
        c = self.config
        outputs = []
        for sample in batch.samples:
            assert sample.copy_from is not None
            try:
                outputs.append((load_rgb(sample.copy_from, max_pixels=c.max_pixels, min_side=c.min_side).image, False))
            except ImageError as exc:
                raise SgidError(f"{sample.copy_from} became unreadable while the run was going ({exc})") from None
        return outputs

    def _pixels(self, batch: Batch) -> list[Image.Image] | None:
        """The batch's source images at its generation size (None for methods that use no source pixels)."""
        if not self.method.uses_source_pixels or batch.kind == COPY:
            return None
        images = []
        for sample in batch.samples:
            assert sample.info is not None
            images.append(resize(self._load(sample.source.path, sample.info.sha256, sample.source.relpath), batch.size))
        return images

    def _finish(
        self, batch: Batch, outputs: Outputs, stages: Stages, flagged_seeds: list[tuple[int, ...]]
    ) -> list[ItemResult]:
        results = []
        for item, (image, flagged), seeds in zip(batch.items, outputs, flagged_seeds, strict=True):
            if not item.wanted:
                continue  # done before; made again only so that its batch-mates are the same
            if flagged:
                error = error_row(item.sample, self.method.name, flagged_reason(self.config, seeds))
                if self.config.on_flagged == "retry":
                    error = replace(error, details={"flagged_seeds": list(seeds)})
                results.append(ItemResult(item.key, error=error))
                continue
            produced = image.size
            info = item.sample.info
            if self.method.resize_to_source and info is not None and not self.config.keep_generation_size:
                image = resize(image, info.size)
            row = manifest_row(self.config, self.method, stages, item, image.size, produced, seeds)
            results.append(ItemResult(item.key, row=row, png=png_bytes(image)))
        return results


def _same_file(loaded: LoadedImage, sha256: str, relpath: str) -> None:
    if loaded.sha256 != sha256:
        raise SgidError(f"{relpath} changed while the run was going; rerun to pick it up")


def flagged_reason(c: AugmentConfig, seeds: tuple[int, ...]) -> str:
    if c.on_flagged != "retry":
        return FLAGGED
    tries = f"{len(seeds)} tr{'y' if len(seeds) == 1 else 'ies'}"
    return f"the safety checker flagged every try ({tries}, seeds {', '.join(map(str, seeds))}); not kept"


def _pick(pixels: list[Image.Image] | None, indices: list[int]) -> list[Image.Image] | None:
    return None if pixels is None else [pixels[i] for i in indices]


def error_row(sample: Sample, method: str, reason: str) -> ErrorRow:
    return ErrorRow(source=sample.source.relpath, k=sample.k, method=method, reason=reason)


def denoising_steps(sample: Sample, steps: int) -> int | None:
    if not runs_diffusion(sample.kind):
        return None
    return int(steps * sample.strength) if sample.strength is not None else steps


def manifest_row(
    c: AugmentConfig,
    method: Method,
    stages: Stages,
    item: WorkItem,
    size: tuple[int, int],
    produced: tuple[int, int],
    flagged_seeds: tuple[int, ...] = (),
) -> ManifestRow:
    """The manifest row of a generated image: provenance, every choice made for it, and the models."""
    sample = item.sample
    info, source = sample.info, sample.source
    captions = info.captions if info else ()
    details: dict[str, Any] = {
        "seed": sample.seed,
        "run_seed": c.seed,
        "captions": [{"text": t.text, "strategy": t.strategy, "similarity": t.similarity} for t in captions],
        "caption": sample.caption.text if sample.caption else None,
        "caption_strategy": sample.caption.strategy if sample.caption else None,
        "similarity": sample.similarity,
        "similarity_mode": (c.similarity if sample.caption.origin is None else "cosine") if sample.caption else None,
        "prompt": sample.prompt.text if sample.prompt else None,
        "prompt_mode": c.prompt if method.uses_prompt_mode else None,
        "negative_prompt": sample.negative_prompt if sample.prompt else None,
        "prompt_weighting": c.prompt_weighting,
        "weighting": c.weighting if (sample.label_weight, sample.caption_weight) != (1.0, 1.0) else None,
        "label_weight": sample.label_weight,
        "caption_weight": sample.caption_weight,
        "guidance_raw": sample.guidance_raw,
        "guidance_scale": sample.guidance_scale,
        "guidance_map": c.guidance_map.describe() if sample.guidance_scale is not None else None,
        "diffusers_guidance": c.diffusers_guidance,
        "noise_rate": sample.strength,
        "steps": c.steps if runs_diffusion(sample.kind) else None,
        "denoising_steps": denoising_steps(sample, c.steps),
        "width": size[0],
        "height": size[1],
        "generation_width": produced[0],
        "generation_height": produced[1],
        "captioner_model": stages.captioner_id if captions else None,
        "scorer_model": stages.scorer_id if captions or sample.caption else None,
        # a copy's "generator" is the model that chose it (retrieval: the CLIP scorer)
        "generator_model": stages.scorer_id if sample.kind == COPY else stages.generator_id(sample.kind),
        "backend": stages.backend(sample.kind) if runs_diffusion(sample.kind) else None,
        "safety_checker": c.safety_checker,
    }
    if c.on_flagged == "retry":  # every seed the safety checker flagged before this image's (``seed``)
        details.update(on_flagged=c.on_flagged, flagged_seeds=list(flagged_seeds))
    if source.origin is not None or source.chain:  # chained onto an earlier run
        details.update(
            parent=source.relpath,
            parent_run=str(c.input_dir.resolve()),
            parent_sha256=info.sha256 if info else None,
        )
        details["chain"] = [*source.chain, method.name]
    if c.concepts is not None:
        details["concept_token"] = (stages.concept_tokens or {}).get(source.class_name)
        details["concepts_sha256"] = stages.concepts_sha256
    if c.lora is not None:
        details.update(lora=c.lora, lora_scale=c.lora_scale)
    details.update(stages.control_fields(sample.kind))
    details.update(method.manifest_fields(sample))
    return ManifestRow(
        file_name=item.file_name,
        label=source.class_name,
        label_text=source.label,
        # provenance: the real image this one descends from, also through chained methods
        source=source.origin or source.relpath,
        source_sha256=source.origin_sha256 if source.origin else (info.sha256 if info else None),
        k=sample.k,
        method=method.name,
        details=details,
    )
