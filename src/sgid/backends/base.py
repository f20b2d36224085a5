"""The generator backend contract: one model family's conditioning, and the recipes written once against it.

A :class:`Backend` wraps the components of one diffusers pipeline (``pipe``) of its family and owns:

* ``encode(prompts, weights, negatives) -> Conditioning``: prompt embeddings (weighted), pooled embeddings,
  and their negative (unconditional) counterparts;
* ``conditioning_for(conditioning, size)``: the extra UNet inputs that depend on the image size (SDXL's
  ``add_time_ids``), added to the conditioning as ``added_cond_kwargs``;
* its native resolution and size multiple, latent preparation and decoding.

The recipes (:meth:`Backend.img2img`, :meth:`Backend.text2img`) and the denoising loop (:func:`denoise`) are
written once: ``unet(x, t, encoder_hidden_states=..., added_cond_kwargs=..., **hook(...))``, with the
classifier-free guidance step done per sample, eps = eps_u + g_i·(eps_c − eps_u), g of shape (B, 1, 1, 1).
Step hooks (:class:`StepHook`, e.g. ControlNet's residuals) give the UNet further inputs at every step. With a
single g > 1 for the whole batch each recipe is exactly the family's diffusers pipeline on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from sgid.registry import Registry
from sgid.seeding import generator
from sgid.stages.prompt import Prompt, PromptEncoder


@dataclass(frozen=True)
class Conditioning:
    """What a batch is conditioned on, one row per sample, with the unconditional counterparts.

    ``added`` and ``negative_added`` hold extra UNet inputs (diffusers' ``added_cond_kwargs``, e.g. SDXL's
    ``text_embeds`` and ``time_ids``); they are empty for SD 1.x/2.x.
    """

    embeds: torch.Tensor  # (B, L, D) encoder_hidden_states, already weighted
    negative_embeds: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None = None  # (B, P) pooled text embeddings (SDXL's second encoder)
    negative_pooled: torch.Tensor | None = None
    added: Mapping[str, torch.Tensor] = field(default_factory=dict)
    negative_added: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def to(self, device: torch.device, dtype: torch.dtype) -> Conditioning:
        def move(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device=device, dtype=dtype)

        return Conditioning(
            self.embeds.to(device=device, dtype=dtype),
            self.negative_embeds.to(device=device, dtype=dtype),
            move(self.pooled),
            move(self.negative_pooled),
            {k: v.to(device=device, dtype=dtype) for k, v in self.added.items()},
            {k: v.to(device=device, dtype=dtype) for k, v in self.negative_added.items()},
        )

    def rows(self, index: slice) -> Conditioning:
        """The conditioning of some samples (``index`` over the batch)."""

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[index]

        return Conditioning(
            self.embeds[index],
            self.negative_embeds[index],
            cut(self.pooled),
            cut(self.negative_pooled),
            {k: v[index] for k, v in self.added.items()},
            {k: v[index] for k, v in self.negative_added.items()},
        )

    def unet_kwargs(self, guided: bool) -> dict[str, Any]:
        """The UNet's conditioning inputs: unconditional rows first, then conditional ones when ``guided``."""

        def rows(negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
            return torch.cat([negative, positive]) if guided else positive

        kwargs: dict[str, Any] = {"encoder_hidden_states": rows(self.negative_embeds, self.embeds)}
        if self.added:
            kwargs["added_cond_kwargs"] = {k: rows(self.negative_added[k], v) for k, v in self.added.items()}
        return kwargs

    def pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        """The same conditioning as diffusers pipelines take it (``prompt_embeds=``, ...), for comparisons."""
        kwargs = {"prompt_embeds": self.embeds, "negative_prompt_embeds": self.negative_embeds}
        if self.pooled is not None and self.negative_pooled is not None:
            kwargs.update(pooled_prompt_embeds=self.pooled, negative_pooled_prompt_embeds=self.negative_pooled)
        return kwargs


@dataclass(frozen=True)
class GenerationOutput:
    images: list[Image.Image]
    nsfw: list[bool]  # True where the safety checker blacked the image out


@dataclass(frozen=True)
class GenerationRequest:
    """One batch to generate: everything but the models."""

    images: Sequence[Image.Image] | None  # source pixels (None for text-to-image)
    conditioning: Conditioning
    guidance: Sequence[float]  # one guidance scale per sample
    strength: float | None  # the noise rate (img2img)
    steps: int
    seeds: Sequence[int]  # one generator per sample
    size: tuple[int, int] | None = None  # (width, height) to generate at when there is no source image
    control_images: Sequence[Image.Image] | None = None  # ControlNet condition images, one per source image

    def check(self) -> None:
        if not (len(self.conditioning) == len(self.guidance) == len(self.seeds)):
            raise ValueError("embeddings, guidance scales and seeds must have the same length")
        for images in (self.images, self.control_images):
            if images is not None and (len(images) != len(self.seeds) or len({im.size for im in images}) != 1):
                raise ValueError("one image per prompt, all of one size")


class StepHook(Protocol):
    """Extra UNet inputs at one denoising step (e.g. ControlNet's residuals).

    ``model_input`` is the scaled latent input (2B rows when guided: unconditional first), ``unet_kwargs`` the
    conditioning the UNet gets (:meth:`Conditioning.unet_kwargs`), ``guided`` whether rows are doubled.
    """

    def __call__(
        self, step: int, t: torch.Tensor, model_input: torch.Tensor, unet_kwargs: dict[str, Any], guided: bool
    ) -> dict[str, Any]: ...


def denoise(
    unet: Any,
    scheduler: Any,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning: Conditioning,
    guidance: torch.Tensor,
    extra_step_kwargs: dict[str, Any],
    *,
    diffusers_guidance: bool = False,
    hooks: Sequence[StepHook] = (),
) -> torch.Tensor:
    """diffusers' denoising loop with per-sample classifier-free guidance.

    ``guidance`` is a (B,) tensor. With ``diffusers_guidance``, samples with g <= 1 use the conditional
    prediction alone, as diffusers does when it turns guidance off; when every g <= 1 the unconditional
    pass is skipped entirely.
    """
    g = guidance.to(device=latents.device, dtype=latents.dtype).view(-1, 1, 1, 1)
    cfg_rows = g.view(-1) > 1 if diffusers_guidance else torch.ones_like(g.view(-1), dtype=torch.bool)
    guided = bool(cfg_rows.any())
    unet_kwargs = conditioning.unet_kwargs(guided)
    for step, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        extra: dict[str, Any] = {}
        for hook in hooks:
            extra.update(hook(step, t, model_input, unet_kwargs, guided))
        noise_pred = unet(model_input, t, **unet_kwargs, **extra, return_dict=False)[0]
        if guided:
            noise_uncond, noise_text = noise_pred.chunk(2)
            guided_pred = noise_uncond + g * (noise_text - noise_uncond)
            noise_pred = torch.where(cfg_rows.view(-1, 1, 1, 1), guided_pred, noise_text)
        latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
    return latents


#: A ControlNet (or any guide) attached to a backend: (backend, condition images, number of denoising steps) ->
#: the hook that guides every step (:class:`sgid.backends.controlnet.ControlNetGuide`).
Guide = Callable[["Backend", Sequence[Image.Image], int], StepHook]


def diffusers_classes(family: str) -> tuple[dict[str, str], dict[str, str], tuple[str, ...]]:
    """A Stable Diffusion-like family's diffusers class names from its prefix (``StableDiffusion``,
    ``StableDiffusionXL``): ``pipelines`` (img2img, text2img), ``control_pipelines`` (img2img with a
    ControlNet) and ``checkpoint_classes``, as :class:`Backend` declares them."""
    return (
        {"img2img": f"{family}Img2ImgPipeline", "text2img": f"{family}Pipeline"},
        {"img2img": f"{family}ControlNetImg2ImgPipeline"},
        (f"{family}Pipeline", f"{family}Img2ImgPipeline"),
    )


class Backend:
    """A model family over one diffusers pipeline's components (see the module docstring).

    Subclasses set the class attributes, implement :meth:`encode`, and override the few steps where their
    family differs (time ids, latent normalisation, decoding). Register them in :data:`BACKENDS`.
    """

    #: the registry name (``--backend``) and what messages call the family
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: generation mode -> the diffusers pipeline class whose recipe it follows (and that loads it)
    pipelines: ClassVar[Mapping[str, str]] = {}
    #: mode -> the diffusers pipeline that a ControlNet-guided run of that mode equals
    control_pipelines: ClassVar[Mapping[str, str]] = {}
    #: ``_class_name`` values (model_index.json) of this family's checkpoints
    checkpoint_classes: ClassVar[tuple[str, ...]] = ()
    #: the tiny-model preset's checkpoint of this family (``tiny:<name>``), for tests and the demo
    tiny_model: ClassVar[str] = ""
    #: the tiny-model preset's ControlNet for this family (``--control`` with ``--models tiny``)
    tiny_controlnet: ClassVar[str] = ""
    #: the model the default preset uses when ``--backend`` names this family and no ``--sd-model`` is given
    default_model: ClassVar[str] = ""
    #: whether checkpoints of this family carry Stable Diffusion's safety checker
    has_safety_checker: ClassVar[bool] = False
    #: whether concepts from ``sgid learn-concepts`` (SD 1.x/2.x text encoder and UNet) fit this family
    uses_concepts: ClassVar[bool] = False

    def __init__(
        self,
        pipe: Any,
        mode: str = "img2img",
        *,
        diffusers_guidance: bool = False,
        guide: Guide | None = None,
        weighting: str = "literal",
    ) -> None:
        if mode not in self.pipelines:
            raise ValueError(f"the {self.name} backend has no {mode} mode ({', '.join(self.pipelines)})")
        self.pipe = pipe
        self.mode = mode
        self.diffusers_guidance = diffusers_guidance
        self.guide = guide
        self.weighting = weighting  # how (w_l, w_c) act on the text encoding (``sgid.stages.prompt.WEIGHTINGS``)

    @classmethod
    def matches_unet(cls, unet_config: Mapping[str, Any]) -> bool:
        """Whether a UNet config (when there is no model_index.json) belongs to this family."""
        return False

    @classmethod
    def matches_checkpoint_keys(cls, keys: frozenset[str]) -> bool:
        """Whether a single-file checkpoint with these weight names belongs to this family (when it has no
        configs beside it); False: undecided."""
        return False

    @classmethod
    def load_kwargs(cls, safety_checker: bool) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments of this family's pipelines."""
        return {}

    # -- geometry ------------------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        """The model's native image size (512 for SD 1.5, 1024 for SDXL)."""
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    @property
    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    # -- conditioning --------------------------------------------------------------------------------------
    def encoders(self) -> list[PromptEncoder]:
        """The prompt encoders, one per text encoder, each weighting the backend's way (``weighting``)."""
        raise NotImplementedError

    def encode(
        self, prompts: Sequence[Prompt], weights: Sequence[tuple[float, float]] | None, negatives: Sequence[str]
    ) -> Conditioning:
        """Prompts (label rows × w_l, caption rows × w_c) and negative prompts, one per sample."""
        raise NotImplementedError

    def conditioning_for(self, conditioning: Conditioning, size: tuple[int, int]) -> Conditioning:
        """Add the UNet inputs that depend on the generation (width, height); none for SD 1.x/2.x."""
        return conditioning

    # -- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> GenerationOutput:
        request.check()
        recipe: dict[str, Callable[[GenerationRequest], GenerationOutput]] = {
            "img2img": self.img2img,
            "text2img": self.text2img,
        }
        return recipe[self.mode](request)

    def img2img(self, r: GenerationRequest) -> GenerationOutput:
        """SGID's image-to-image step: x' = StableDiffusion(x, p, g, n) (paper eq. 3), batched, per-sample g."""
        pipe = self.pipe
        # 1. Check inputs
        if r.images is None or r.strength is None:
            raise ValueError("img2img needs source images and a strength")
        batch = len(r.images)
        # 2. Define call parameters: one generator per image, so results do not depend on the batch
        device, dtype = self.device, self.dtype
        generators = [generator(seed) for seed in r.seeds]
        # 3. Prompt embeddings come encoded (and weighted) from the prompt stage
        conditioning = r.conditioning.to(device, dtype)
        # 4. Preprocess image
        image = pipe.image_processor.preprocess(list(r.images))
        # 5. Set timesteps: img2img runs int(steps * strength) of the schedule's last steps
        pipe.scheduler.set_timesteps(r.steps, device=device)
        timesteps, _ = pipe.get_timesteps(r.steps, r.strength, device)
        # 6. Prepare latent variables (VAE encoding and noise, each from its image's generator)
        if len(timesteps) == 0:
            # noise rate 0: no denoising steps; the result is the VAE's reconstruction of the input
            latents = self.encode_only(image, generators)
        else:
            latent_timestep = timesteps[:1].repeat(batch)
            latents = pipe.prepare_latents(image, latent_timestep, batch, 1, dtype, device, generators)
        # 7. Prepare extra step kwargs and the size-dependent conditioning
        extra_step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)
        width, height = latents.shape[-1] * self.size_multiple, latents.shape[-2] * self.size_multiple
        conditioning = self.conditioning_for(conditioning, (width, height))
        hooks = [] if self.guide is None else [self.guide(self, self.control_images(r), len(timesteps))]
        # 8. Denoising loop with per-sample guidance
        latents = self.denoise(latents, timesteps, conditioning, r.guidance, extra_step_kwargs, hooks)
        # 9. Decode, safety check, convert
        return self.decode(latents, generators)

    def text2img(self, r: GenerationRequest) -> GenerationOutput:
        """Text-to-image (the paper's Text2Img baseline): no source pixels, per-sample guidance.

        diffusers' text-to-image recipe (latents from one generator per image, scaled by the scheduler's initial
        sigma, all timesteps) with the same per-sample guidance as :meth:`img2img`.
        """
        pipe = self.pipe
        # 1. Check inputs: no source image is used, only its size
        if r.size is None:
            raise ValueError("text-to-image needs a size")
        width, height = r.size
        # 2. Define call parameters
        device, dtype = self.device, self.dtype
        generators = [generator(seed) for seed in r.seeds]
        # 3. Prompt embeddings come encoded from the prompt stage
        conditioning = self.conditioning_for(r.conditioning.to(device, dtype), (width, height))
        # 4. Set timesteps
        pipe.scheduler.set_timesteps(r.steps, device=device)
        # 5. Prepare latent variables, one generator per image
        channels = pipe.unet.config.in_channels
        latents = pipe.prepare_latents(len(r.seeds), channels, height, width, dtype, device, generators)
        # 6. Denoising loop with per-sample guidance (a guide needs a source image's condition: none here)
        if self.guide is not None:
            raise ValueError("a guided (ControlNet) backend generates from source images: img2img")
        extra_step_kwargs = pipe.prepare_extra_step_kwargs(generators, 0.0)
        latents = self.denoise(latents, pipe.scheduler.timesteps, conditioning, r.guidance, extra_step_kwargs, [])
        # 7. Decode, safety check, convert
        return self.decode(latents, generators)

    def control_images(self, r: GenerationRequest) -> Sequence[Image.Image]:
        """The request's condition images, of the source images' size."""
        if r.control_images is None or r.images is None or r.control_images[0].size != r.images[0].size:
            raise ValueError("a ControlNet-guided batch needs one condition image per source image, of its size")
        return r.control_images

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Conditioning,
        guidance: Sequence[float],
        extra_step_kwargs: dict[str, Any],
        hooks: Sequence[StepHook],
    ) -> torch.Tensor:
        return denoise(
            self.pipe.unet,
            self.pipe.scheduler,
            latents,
            timesteps,
            conditioning,
            torch.tensor([float(g) for g in guidance]),
            extra_step_kwargs,
            diffusers_guidance=self.diffusers_guidance,
            hooks=hooks,
        )

    def encode_only(self, image: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """The scaled VAE latents of ``image`` without noise (a noise rate of 0)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

        vae = self.pipe.vae
        image = image.to(device=self.device, dtype=self.dtype)
        latents = [retrieve_latents(vae.encode(image[i : i + 1]), generator=generators[i]) for i in range(len(image))]
        return vae.config.scaling_factor * torch.cat(latents)

    def decode(self, latents: torch.Tensor, generators: list[torch.Generator]) -> GenerationOutput:
        """VAE decode, safety check (if the pipeline has a checker) and conversion to PIL, as the pipelines do."""
        pipe = self.pipe
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
        image, nsfw = pipe.run_safety_checker(image, latents.device, self.dtype)
        flags = [bool(x) for x in nsfw] if nsfw is not None else [False] * image.shape[0]
        pil = pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[not f for f in flags])
        return GenerationOutput(images=list(pil), nsfw=flags)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


#: Model families by name: the ``--backend`` value is the registry key.
BACKENDS: Registry[type[Backend]] = Registry("backend")
