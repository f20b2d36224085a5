"""Stable Diffusion generation with one guidance scale per sample.

diffusers' pipelines take one guidance scale per call; SGID gives every image its own g = f(s*). Rather than
one call per image, :class:`Img2ImgGenerator` runs diffusers' own img2img recipe (same preprocessing,
timesteps, latents, scheduler steps and decoding, through the pipeline's components and helper methods) with
the classifier-free guidance step done per sample: eps = eps_u + g_i·(eps_c − eps_u), g of shape (B, 1, 1, 1).
With a single g > 1 for the whole batch it is exactly ``StableDiffusionImg2ImgPipeline.__call__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from sgid.registry import Registry
from sgid.seeding import generator

#: Generators by kind (``img2img``, ``text2img``, ``instruct``); each takes a diffusers pipeline.
GENERATORS: Registry[type] = Registry("generator kind")


@dataclass(frozen=True)
class GenerationOutput:
    images: list[Image.Image]
    nsfw: list[bool]  # True where the safety checker blacked the image out


def denoise(
    pipe,
    latents,
    timesteps,
    prompt_embeds,
    negative_embeds,
    guidance,
    extra_step_kwargs,
    *,
    diffusers_guidance=False,
    extra_latents=None,
):  # type: ignore[no-untyped-def]
    """diffusers' denoising loop with per-sample classifier-free guidance.

    ``guidance`` is a (B,) tensor. With ``diffusers_guidance``, samples with g <= 1 use the conditional
    prediction alone, as diffusers does when it turns guidance off; when every g <= 1 the unconditional
    pass is skipped entirely.
    """
    scheduler, unet = pipe.scheduler, pipe.unet
    g = guidance.to(device=latents.device, dtype=latents.dtype).view(-1, 1, 1, 1)
    cfg_rows = g.view(-1) > 1 if diffusers_guidance else torch.ones_like(g.view(-1), dtype=torch.bool)
    any_cfg = bool(cfg_rows.any())
    embeds = torch.cat([negative_embeds, prompt_embeds]) if any_cfg else prompt_embeds
    for t in timesteps:
        model_input = torch.cat([latents] * 2) if any_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        if extra_latents is not None:
            model_input = torch.cat([model_input, extra_latents], dim=1)
        noise_pred = unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if any_cfg:
            noise_uncond, noise_text = noise_pred.chunk(2)
            guided = noise_uncond + g * (noise_text - noise_uncond)
            noise_pred = torch.where(cfg_rows.view(-1, 1, 1, 1), guided, noise_text)
        latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
    return latents


def decode(pipe, latents, generators, dtype) -> GenerationOutput:  # type: ignore[no-untyped-def]
    """VAE decode, safety check (if the pipeline has a checker) and conversion to PIL, as the pipelines do."""
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    image, nsfw = pipe.run_safety_checker(image, latents.device, dtype)
    flags = [bool(x) for x in nsfw] if nsfw is not None else [False] * image.shape[0]
    pil = pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[not f for f in flags])
    return GenerationOutput(images=list(pil), nsfw=flags)


@GENERATORS.register("img2img")
class Img2ImgGenerator:
    """SGID's image-to-image step: x' = StableDiffusion(x, p, g, n) (paper eq. 3), batched, per-sample g."""

    def __init__(self, pipe, *, diffusers_guidance: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.pipe = pipe
        self.diffusers_guidance = diffusers_guidance

    @property
    def resolution(self) -> int:
        """The model's native image size (512 for SD 1.x)."""
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    @property
    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[Image.Image],
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor,
        guidance: Sequence[float],
        *,
        strength: float,
        steps: int,
        seeds: Sequence[int],
    ) -> GenerationOutput:
        pipe = self.pipe
        # 1. Check inputs
        batch = len(images)
        if not (batch == prompt_embeds.shape[0] == negative_embeds.shape[0] == len(guidance) == len(seeds)):
            raise ValueError("images, embeddings, guidance scales and seeds must have the same length")
        if len({im.size for im in images}) != 1:
            raise ValueError("all images of one batch must have the same size")
        # 2. Define call parameters: one generator per image, so results do not depend on the batch
        device = pipe._execution_device
        dtype = pipe.unet.dtype
        generators = [generator(seed) for seed in seeds]
        # 3. Prompt embeddings come encoded (and weighted) from the prompt stage
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        negative_embeds = negative_embeds.to(device=device, dtype=dtype)
        # 4. Preprocess image
        image = pipe.image_processor.preprocess(list(images))
        # 5. Set timesteps: img2img runs int(steps * strength) of the schedule's last steps
        pipe.scheduler.set_timesteps(steps, device=device)
        timesteps, _ = pipe.get_timesteps(steps, strength, device)
        # 6. Prepare latent variables (VAE encoding and noise, each from its image's generator)
        if len(timesteps) == 0:
            # noise rate 0: no denoising steps; the result is the VAE's reconstruction of the input
            latents = self._encode_only(image, dtype, device, generators)
        else:
            latent_timestep = timesteps[:1].repeat(batch)
            latents = pipe.prepare_latents(image, latent_timestep, batch, 1, dtype, device, generators)
        # 7. Prepare extra step kwargs
        extra_step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)
        # 8. Denoising loop with per-sample guidance
        latents = denoise(
            pipe,
            latents,
            timesteps,
            prompt_embeds,
            negative_embeds,
            torch.tensor([float(g) for g in guidance]),
            extra_step_kwargs,
            diffusers_guidance=self.diffusers_guidance,
        )
        # 9. Decode, safety check, convert
        return decode(pipe, latents, generators, dtype)

    def _encode_only(self, image, dtype, device, generators):  # type: ignore[no-untyped-def]
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

        image = image.to(device=device, dtype=dtype)
        latents = [
            retrieve_latents(self.pipe.vae.encode(image[i : i + 1]), generator=generators[i])
            for i in range(image.shape[0])
        ]
        return self.pipe.vae.config.scaling_factor * torch.cat(latents)
