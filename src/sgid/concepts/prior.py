"""Images rendered with the training components: prior-preservation class images and checkpoint samples.

**Prior preservation** (DreamBooth): before fine-tuning, the frozen base model draws ``N`` images per class from
the class prompt ``"a photo of a <label>"``; training then also fits those, so the model keeps its idea of the
class while it learns the dataset's. They are stored in ``DIR/prior/<class>/0000.png ...`` and reused by a rerun.
Each image has its own seed (``derive_seed(seed, class, i, "prior")``) and images are rendered in fixed groups
of :data:`GROUP` (a group is always rendered whole), so a run killed half-way renders the same bytes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from sgid.concepts.lora import LoraSettings
from sgid.concepts.store import ConceptsDir
from sgid.concepts.trainer import DiffusionParts
from sgid.images import ImageError, LoadedImage, load_rgb, png_bytes
from sgid.progress import bar
from sgid.seeding import derive_seed, generator

PRIOR_DIR = "prior"
CLASS_PROMPT = "a photo of a {}"  # DreamBooth's class prompt, "a [class noun]"
GROUP = 4  # images per rendering call


def render(
    parts: DiffusionParts, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance: float, size: int
) -> list[Image.Image]:
    """Text-to-image with the parts as they are now (frozen, or with the adapters being trained).

    The pipeline's own scheduler type, a fresh instance (no state shared with anything else); one CPU generator
    per image; no safety checker (these images are for training and monitoring, never published).
    """
    from diffusers import StableDiffusionPipeline

    assert parts.scheduler is not None, "rendering needs the pipeline's scheduler (DiffusionParts.from_pipeline)"
    pipe: Any = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=type(parts.scheduler).from_config(parts.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    unet = parts.unet
    # a trained text encoder is fp32 beside a half-precision UNet: autocast, as the diffusers example's
    # validation runs do (a no-op when both are fp32, as on the CPU)
    with torch.autocast(unet.device.type, dtype=unet.dtype, enabled=unet.dtype != parts.text_encoder.dtype):
        output = pipe(
            list(prompts),
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[generator(seed) for seed in seeds],
        )
    return list(output.images)


def render_to(
    store: ConceptsDir,
    parts: DiffusionParts,
    jobs: Sequence[tuple[str, str, int]],
    *,
    steps: int,
    guidance: float,
    size: int,
    progress: Any = None,
) -> None:
    """Render ``(relpath, prompt, seed)`` jobs in groups of :data:`GROUP` and write each image atomically."""
    for start in range(0, len(jobs), GROUP):
        group = jobs[start : start + GROUP]
        images = render(
            parts, [p for _, p, _ in group], [s for _, _, s in group], steps=steps, guidance=guidance, size=size
        )
        for (relpath, _, _), image in zip(group, images, strict=True):
            store.write(relpath, png_bytes(image))
        if progress is not None:
            progress.update(len(group))


def prior_images(
    store: ConceptsDir, parts: DiffusionParts, labels: dict[str, str], settings: LoraSettings, size: int, quiet: bool
) -> dict[str, list[LoadedImage]]:
    """``settings.prior_images`` class images per class (class folder -> label), rendered where missing, read
    back (``prior_steps`` denoising steps at guidance ``prior_guidance``, seeds from ``seed``)."""
    count, seed = settings.prior_images, settings.seed
    missing: list[list[tuple[str, str, int]]] = []  # whole groups with an image absent or unreadable
    for class_name, label in labels.items():
        prompt = CLASS_PROMPT.format(label)
        for start in range(0, count, GROUP):
            group = [
                (prior_relpath(class_name, i), prompt, derive_seed(seed, class_name, i, "prior"))
                for i in range(start, min(count, start + GROUP))
            ]
            if not all(_readable(store, relpath) for relpath, _, _ in group):
                missing.append(group)
    if missing:
        progress = bar(sum(len(group) for group in missing), "prior images", "img", quiet)
        try:
            for group in missing:
                render_to(
                    store,
                    parts,
                    group,
                    steps=settings.prior_steps,
                    guidance=settings.prior_guidance,
                    size=size,
                    progress=progress,
                )
        finally:
            progress.close()
    return {
        class_name: [load_rgb(store.path / prior_relpath(class_name, i)) for i in range(count)] for class_name in labels
    }


def prior_relpath(class_name: str, number: int) -> str:
    return f"{PRIOR_DIR}/{class_name}/{number:04d}.png"


def _readable(store: ConceptsDir, relpath: str) -> bool:
    try:
        load_rgb(store.path / relpath)
    except ImageError:
        return False
    return True
