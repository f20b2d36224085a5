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
):
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


def decode(pipe, latents, generators, dtype) -> GenerationOutput:
    """VAE decode, safety check (if the pipeline has a checker) and conversion to PIL, as the pipelines do."""
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    image, nsfw = pipe.run_safety_checker(image, latents.device, dtype)
    flags = [bool(x) for x in nsfw] if nsfw is not None else [False] * image.shape[0]
    pil = pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[not f for f in flags])
    return GenerationOutput(images=list(pil), nsfw=flags)


@dataclass(frozen=True)
class GenerationRequest:
    """One batch to generate: everything but the models."""

    images: Sequence[Image.Image] | None  # source pixels (None for text-to-image)
    prompt_embeds: torch.Tensor  # (B, 77, D), already weighted
    negative_embeds: torch.Tensor  # (B, 77, D)
    guidance: Sequence[float]  # one guidance scale per sample
    strength: float | None  # the noise rate (img2img)
    steps: int
    seeds: Sequence[int]  # one generator per sample
    size: tuple[int, int] | None  # (width, height) to generate at when there is no source image


class StableDiffusionGenerator:
    """A generator over a diffusers pipeline's components: ``generator(images, embeds, ...)`` → images."""

    def __init__(self, pipe, *, diffusers_guidance: bool = False) -> None:
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
        images: Sequence[Image.Image] | None,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor,
        guidance: Sequence[float],
        *,
        strength: float | None,
        steps: int,
        seeds: Sequence[int],
        size: tuple[int, int] | None = None,
    ) -> GenerationOutput:
        batch = prompt_embeds.shape[0]
        if not (batch == negative_embeds.shape[0] == len(guidance) == len(seeds)):
            raise ValueError("embeddings, guidance scales and seeds must have the same length")
        if images is not None and (len(images) != batch or len({im.size for im in images}) != 1):
            raise ValueError("one image per prompt, all of one size")
        return self.generate(
            GenerationRequest(images, prompt_embeds, negative_embeds, guidance, strength, steps, seeds, size)
        )

    def generate(self, request: GenerationRequest) -> GenerationOutput:
        raise NotImplementedError


@GENERATORS.register("img2img")
class Img2ImgGenerator(StableDiffusionGenerator):
    """SGID's image-to-image step: x' = StableDiffusion(x, p, g, n) (paper eq. 3), batched, per-sample g."""

    def generate(self, request: GenerationRequest) -> GenerationOutput:
        pipe, r = self.pipe, request
        # 1. Check inputs
        if r.images is None or r.strength is None:
            raise ValueError("img2img needs source images and a strength")
        batch = len(r.images)
        # 2. Define call parameters: one generator per image, so results do not depend on the batch
        device, dtype = pipe._execution_device, pipe.unet.dtype
        generators = [generator(seed) for seed in r.seeds]
        # 3. Prompt embeddings come encoded (and weighted) from the prompt stage
        prompt_embeds = r.prompt_embeds.to(device=device, dtype=dtype)
        negative_embeds = r.negative_embeds.to(device=device, dtype=dtype)
        # 4. Preprocess image
        image = pipe.image_processor.preprocess(list(r.images))
        # 5. Set timesteps: img2img runs int(steps * strength) of the schedule's last steps
        pipe.scheduler.set_timesteps(r.steps, device=device)
        timesteps, _ = pipe.get_timesteps(r.steps, r.strength, device)
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
            torch.tensor([float(g) for g in r.guidance]),
            extra_step_kwargs,
            diffusers_guidance=self.diffusers_guidance,
        )
        # 9. Decode, safety check, convert
        return decode(pipe, latents, generators, dtype)

    def _encode_only(self, image, dtype, device, generators):
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

        image = image.to(device=device, dtype=dtype)
        latents = [
            retrieve_latents(self.pipe.vae.encode(image[i : i + 1]), generator=generators[i])
            for i in range(image.shape[0])
        ]
        return self.pipe.vae.config.scaling_factor * torch.cat(latents)


@GENERATORS.register("text2img")
class Text2ImgGenerator(StableDiffusionGenerator):
    """Stable Diffusion text-to-image (the paper's Text2Img baseline): no source pixels, per-sample guidance.

    diffusers' ``StableDiffusionPipeline`` recipe (latents from one generator per image, scaled by the
    scheduler's initial sigma, all timesteps) with the same per-sample guidance as :class:`Img2ImgGenerator`.
    """

    def generate(self, request: GenerationRequest) -> GenerationOutput:
        pipe, r = self.pipe, request
        # 1. Check inputs: no source image is used, only its size
        if r.size is None:
            raise ValueError("text-to-image needs a size")
        width, height = r.size
        # 2. Define call parameters
        device, dtype = pipe._execution_device, pipe.unet.dtype
        generators = [generator(seed) for seed in r.seeds]
        # 3. Prompt embeddings come encoded from the prompt stage
        prompt_embeds = r.prompt_embeds.to(device=device, dtype=dtype)
        negative_embeds = r.negative_embeds.to(device=device, dtype=dtype)
        # 4. Set timesteps
        pipe.scheduler.set_timesteps(r.steps, device=device)
        # 5. Prepare latent variables, one generator per image
        channels = pipe.unet.config.in_channels
        latents = pipe.prepare_latents(len(r.seeds), channels, height, width, dtype, device, generators)
        # 6. Denoising loop with per-sample guidance
        latents = denoise(
            pipe,
            latents,
            pipe.scheduler.timesteps,
            prompt_embeds,
            negative_embeds,
            torch.tensor([float(g) for g in r.guidance]),
            pipe.prepare_extra_step_kwargs(generators, 0.0),
            diffusers_guidance=self.diffusers_guidance,
        )
        # 7. Decode, safety check, convert
        return decode(pipe, latents, generators, dtype)


@GENERATORS.register("instruct")
class InstructPix2PixGenerator(StableDiffusionGenerator):
    """InstructPix2Pix (the paper's SGID+InstructPix2Pix baseline): edit the image following an instruction.

    Runs diffusers' ``StableDiffusionInstructPix2PixPipeline`` itself with one generator per image. Its
    guidance is three-way (text and image scales) and constant over a run, so no per-sample variant is needed.
    """

    def __init__(self, pipe, *, diffusers_guidance: bool = False, image_guidance: float = 1.5) -> None:
        super().__init__(pipe, diffusers_guidance=diffusers_guidance)  # the pipeline's own guidance rules apply
        self.image_guidance = image_guidance

    def generate(self, request: GenerationRequest) -> GenerationOutput:
        r = request
        if r.images is None:
            raise ValueError("InstructPix2Pix edits a source image")
        if len(set(r.guidance)) != 1:
            raise ValueError("InstructPix2Pix takes one text guidance scale per batch")
        output = self.pipe(
            image=list(r.images),
            prompt_embeds=r.prompt_embeds,
            negative_prompt_embeds=r.negative_embeds,
            num_inference_steps=r.steps,
            guidance_scale=float(r.guidance[0]),
            image_guidance_scale=self.image_guidance,
            generator=[generator(seed) for seed in r.seeds],
        )
        flags = output.nsfw_content_detected or [False] * len(output.images)
        return GenerationOutput(images=list(output.images), nsfw=[bool(f) for f in flags])
