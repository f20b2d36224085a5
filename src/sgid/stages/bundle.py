"""The stages of a run, with their models, loaded once and handed to the pipeline.

Only what the method needs is loaded: no BLIP/CLIP when no captions are used, no img2img pipeline for
text-to-image methods. Generators are chosen by kind (``img2img``, ``text2img``, ``instruct``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from sgid.models.loading import (
    ModelChoice,
    load_captioner,
    load_scorer,
    load_sd_pipeline,
    resolve_device,
    resolve_dtype,
)
from sgid.stages.caption import Captioner
from sgid.stages.generate import GENERATORS
from sgid.stages.prompt import PromptEncoder
from sgid.stages.score import ClipScorer

if TYPE_CHECKING:
    from sgid.config import AugmentConfig
    from sgid.methods.base import Method
    from sgid.sample import Sample


@dataclass
class GenerateStage:
    """Encodes a batch's prompts (weighted) and runs one generator over the batch."""

    generator: Any  # Img2ImgGenerator or another generator with the same call signature
    encoder: PromptEncoder
    model_id: str
    steps: int

    def __call__(self, batch: list[Sample], pixels: list[Image.Image] | None) -> list[tuple[Image.Image, bool]]:
        prompts = [s.prompt for s in batch]
        assert all(p is not None for p in prompts)
        embeds = self.encoder.encode(prompts, [(s.label_weight, s.caption_weight) for s in batch])  # type: ignore[arg-type]
        negative = self.encoder.encode_texts([s.negative_prompt for s in batch])
        output = self.generator(
            pixels,
            embeds,
            negative,
            [s.guidance_scale for s in batch],
            strength=batch[0].strength,
            steps=self.steps,
            seeds=[s.seed for s in batch],
        )
        return list(zip(output.images, output.nsfw, strict=True))


@dataclass
class Stages:
    captioner: Captioner | None = None
    scorer: ClipScorer | None = None
    captioner_id: str | None = None
    scorer_id: str | None = None
    generators: dict[str, GenerateStage] = field(default_factory=dict)

    def generate(self, batch: list[Sample], pixels: list[Image.Image] | None) -> list[tuple[Image.Image, bool]]:
        return self.generators[batch[0].kind](batch, pixels)

    def resolution(self, kind: str) -> int:
        return int(self.generators[kind].generator.resolution)

    def size_multiple(self, kind: str) -> int:
        return int(self.generators[kind].generator.size_multiple)

    def generator_id(self, kind: str) -> str:
        return self.generators[kind].model_id


def model_fingerprint(name: str, model: Any) -> str:
    """The model's name plus its hub revision when known, so caches never mix two versions of a model."""
    revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    return f"{name}@{revision}" if revision else name


def load_stages(config: AugmentConfig, choice: ModelChoice, method: Method) -> Stages:
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    stages = Stages()
    if method.needs_captions():
        blip, blip_processor = load_captioner(choice.captioner, device, dtype)
        clip, clip_processor = load_scorer(choice.scorer, device, dtype)
        stages.captioner = Captioner(blip, blip_processor, config.captions)
        stages.scorer = ClipScorer(clip, clip_processor)
        stages.captioner_id = model_fingerprint(choice.captioner.name, blip)
        stages.scorer_id = model_fingerprint(choice.scorer.name, clip)
    for kind in getattr(method, "generator_kinds", ("img2img",)):
        stages.generators[kind] = build_generate_stage(kind, config, choice, device, dtype)
    return stages


def build_generate_stage(
    kind: str, config: AugmentConfig, choice: ModelChoice, device: torch.device, dtype: torch.dtype
) -> GenerateStage:
    ref = choice.instruct if kind == "instruct" else choice.generator
    pipe = load_sd_pipeline(ref, kind, device, dtype, config.safety_checker)
    generator = GENERATORS.get(kind)(pipe, diffusers_guidance=config.diffusers_guidance)
    return GenerateStage(generator, PromptEncoder(pipe.tokenizer, pipe.text_encoder), ref.name, config.steps)
