"""Stable Diffusion XL: two CLIP text encoders, pooled text embeddings and size conditioning (``add_time_ids``).

``img2img`` follows ``StableDiffusionXLImg2ImgPipeline``, ``text2img`` ``StableDiffusionXLPipeline``; with a
ControlNet, ``img2img`` follows ``StableDiffusionXLControlNetImg2ImgPipeline``. As in diffusers:

* the prompt embeddings are both encoders' penultimate hidden states side by side (768 + 1280 for SDXL base);
  SGID's prompt weights act on each encoder's output the ``--weighting`` way, as for SD 1.5;
* the pooled embedding (``text_embeds``) is the second encoder's projected output for the unweighted prompt;
* ``time_ids`` are (original size, crop top-left, target size) = ((h, w), (0, 0), (h, w)), or for a refiner
  checkpoint (``requires_aesthetics_score``) ((h, w), (0, 0), aesthetic score 6 / negative 2.5);
* an empty negative prompt is zeros when the checkpoint says ``force_zeros_for_empty_prompt`` (SDXL base does),
  which is what diffusers does without a negative prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sgid.backends.base import BACKENDS, Backend, Conditioning, GenerationOutput, diffusers_classes
from sgid.stages.prompt import Prompt, PromptEncoder

AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # diffusers' defaults for refiner checkpoints


@BACKENDS.register("sdxl")
class StableDiffusionXL(Backend):
    name = "sdxl"
    title = "Stable Diffusion XL"
    pipelines, control_pipelines, checkpoint_classes = diffusers_classes("StableDiffusionXL")
    tiny_model = "tiny:sdxl"
    tiny_controlnet = "tiny:controlnet_sdxl"
    default_model = "stabilityai/stable-diffusion-xl-base-1.0"

    @classmethod
    def matches_unet(cls, unet_config: Mapping[str, Any]) -> bool:
        return unet_config.get("in_channels") == 4 and unet_config.get("addition_embed_type") == "text_time"

    @classmethod
    def matches_checkpoint_keys(cls, keys: frozenset[str]) -> bool:
        return any(key.startswith("conditioner.embedders.1.") for key in keys)

    def encoders(self) -> list[PromptEncoder]:
        """The first encoder (absent from refiner checkpoints) and the second, both at the penultimate layer."""
        if not hasattr(self, "_encoders"):
            pipe = self.pipe
            pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
            self._encoders = [PromptEncoder(t, e, self.weighting, hidden_layer=-2) for t, e in pairs if e is not None]
        return self._encoders

    def encode(
        self, prompts: Sequence[Prompt], weights: Sequence[tuple[float, float]] | None, negatives: Sequence[str]
    ) -> Conditioning:
        encoders = self.encoders()
        weights = None if weights is None else list(weights)
        embeds = torch.cat([e.encode(list(prompts), weights) for e in encoders], dim=-1)
        negative = torch.cat([e.encode_texts(list(negatives)) for e in encoders], dim=-1)
        pooled = encoders[-1].pooled_texts([p.text for p in prompts])
        negative_pooled = encoders[-1].pooled_texts(list(negatives))
        if self.pipe.config.get("force_zeros_for_empty_prompt", False):
            empty = torch.tensor([not n for n in negatives], device=negative.device)
            negative = torch.where(empty.view(-1, 1, 1), torch.zeros_like(negative), negative)
            negative_pooled = torch.where(empty.view(-1, 1), torch.zeros_like(negative_pooled), negative_pooled)
        return Conditioning(embeds, negative, pooled, negative_pooled)

    def conditioning_for(self, conditioning: Conditioning, size: tuple[int, int]) -> Conditioning:
        width, height = size
        if self.pipe.config.get("requires_aesthetics_score", False):
            ids = [height, width, 0, 0, AESTHETIC_SCORE]
            negative_ids = [height, width, 0, 0, NEGATIVE_AESTHETIC_SCORE]
        else:
            ids = negative_ids = [height, width, 0, 0, height, width]
        rows = len(conditioning)
        like = conditioning.embeds
        assert conditioning.pooled is not None and conditioning.negative_pooled is not None

        def time_ids(values: list[float]) -> torch.Tensor:
            return torch.tensor([values], dtype=like.dtype, device=like.device).repeat(rows, 1)

        return Conditioning(
            conditioning.embeds,
            conditioning.negative_embeds,
            conditioning.pooled,
            conditioning.negative_pooled,
            {"text_embeds": conditioning.pooled, "time_ids": time_ids(ids)},
            {"text_embeds": conditioning.negative_pooled, "time_ids": time_ids(negative_ids)},
        )

    def encode_only(self, image: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        return self.pipe.prepare_latents(
            image, None, len(image), 1, self.dtype, self.device, generators, add_noise=False
        )

    def decode(self, latents: torch.Tensor, generators: list[torch.Generator]) -> GenerationOutput:
        """VAE decode as the SDXL pipelines do it: in fp32 when an fp16 VAE would overflow, latents
        de-normalised with the VAE's mean and std when it has them, watermark when the pipeline adds one."""
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
            latents = latents.to(torch.float32)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        if getattr(self.pipe, "watermark", None) is not None:
            image = self.pipe.watermark.apply_watermark(image)
        images = self.pipe.image_processor.postprocess(image, output_type="pil")
        return GenerationOutput(images=list(images), nsfw=[False] * len(images))
