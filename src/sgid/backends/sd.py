"""Stable Diffusion 1.x/2.x (the paper's model): one CLIP text encoder, conditioning by cross-attention only.

``img2img`` follows ``StableDiffusionImg2ImgPipeline``, ``text2img`` ``StableDiffusionPipeline``; with a
ControlNet, ``img2img`` follows ``StableDiffusionControlNetImg2ImgPipeline``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sgid.backends.base import BACKENDS, Backend, Conditioning, diffusers_classes
from sgid.stages.prompt import Prompt, PromptEncoder


@BACKENDS.register("sd")
class StableDiffusion(Backend):
    name = "sd"
    title = "Stable Diffusion"
    pipelines, control_pipelines, checkpoint_classes = diffusers_classes("StableDiffusion")
    tiny_model = "tiny:sd"
    tiny_controlnet = "tiny:controlnet"
    default_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    has_safety_checker = True
    uses_concepts = True

    @classmethod
    def matches_unet(cls, unet_config: Mapping[str, Any]) -> bool:
        return unet_config.get("in_channels") == 4 and unet_config.get("addition_embed_type") is None

    @classmethod
    def load_kwargs(cls, safety_checker: bool) -> dict[str, Any]:
        return {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}

    def encoders(self) -> list[PromptEncoder]:
        if not hasattr(self, "_encoders"):
            self._encoders = [PromptEncoder(self.pipe.tokenizer, self.pipe.text_encoder, self.weighting)]
        return self._encoders

    def encode(
        self, prompts: Sequence[Prompt], weights: Sequence[tuple[float, float]] | None, negatives: Sequence[str]
    ) -> Conditioning:
        (encoder,) = self.encoders()
        embeds = encoder.encode(list(prompts), None if weights is None else list(weights))
        return Conditioning(embeds, encoder.encode_texts(list(negatives)))
