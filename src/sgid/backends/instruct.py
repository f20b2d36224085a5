"""InstructPix2Pix (the paper's SGID+InstructPix2Pix baseline): edit the image following an instruction.

Its UNet takes the image latents as 4 extra input channels, and its guidance is three-way (text and image
scales), constant over a run: generation runs diffusers' ``StableDiffusionInstructPix2PixPipeline`` itself
with one generator per image. Prompts are encoded as for Stable Diffusion 1.x.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sgid.backends.base import BACKENDS, GenerationOutput, GenerationRequest
from sgid.backends.sd import StableDiffusion
from sgid.seeding import generator


@BACKENDS.register("instruct_pix2pix")
class InstructPix2Pix(StableDiffusion):
    name = "instruct_pix2pix"
    title = "InstructPix2Pix"
    pipelines = {"instruct": "StableDiffusionInstructPix2PixPipeline"}
    control_pipelines = {}
    checkpoint_classes = ("StableDiffusionInstructPix2PixPipeline",)
    tiny_model = "tiny:pix2pix"
    tiny_controlnet = ""
    default_model = "timbrooks/instruct-pix2pix"

    def __init__(self, pipe: Any, mode: str = "instruct", *, image_guidance: float = 1.5, **options: Any) -> None:
        """``options``: :class:`Backend`'s (``diffusers_guidance``, ``guide``, ``weighting``)."""
        super().__init__(pipe, mode, **options)
        self.image_guidance = image_guidance

    @classmethod
    def matches_unet(cls, unet_config: Mapping[str, Any]) -> bool:
        return unet_config.get("in_channels") == 8 and unet_config.get("addition_embed_type") is None

    def generate(self, request: GenerationRequest) -> GenerationOutput:
        r = request
        r.check()
        if r.images is None:
            raise ValueError("InstructPix2Pix edits a source image")
        if len(set(r.guidance)) != 1:
            raise ValueError("InstructPix2Pix takes one text guidance scale per batch")
        output = self.pipe(
            image=list(r.images),
            **r.conditioning.pipeline_kwargs(),
            num_inference_steps=r.steps,
            guidance_scale=float(r.guidance[0]),
            image_guidance_scale=self.image_guidance,
            generator=[generator(seed) for seed in r.seeds],
        )
        flags = output.nsfw_content_detected or [False] * len(output.images)
        return GenerationOutput(images=list(output.images), nsfw=[bool(f) for f in flags])
