"""ControlNet guidance for any backend: a step hook that feeds a ControlNet's residuals to the UNet at every step.

At each denoising step the ControlNet sees the same latents, timestep and conditioning as the UNet
(``encoder_hidden_states``, and ``added_cond_kwargs`` for SDXL) plus the condition image, and its down/mid block
residuals, scaled by ``--control-scale``, enter the UNet as ``down_block_additional_residuals`` /
``mid_block_additional_residual`` — the call of diffusers' ``StableDiffusionControlNetImg2ImgPipeline`` (and its
XL sibling), without guess mode, over the whole schedule. With classifier-free guidance the condition image is
repeated for the unconditional rows, as diffusers does, so per-sample guidance is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from sgid.errors import SgidError

if TYPE_CHECKING:
    from sgid.backends.base import Backend, StepHook


class ControlNetGuide:
    """A :data:`~sgid.backends.Guide` over one ControlNet: ``guide(backend, condition_images, steps) -> hook``."""

    def __init__(self, controlnet: Any, scale: float, name: str = "") -> None:
        self.controlnet = controlnet
        self.scale = float(scale)
        self.name = name  # what manifests record (the --controlnet value)
        self.processor: Any = None

    def check(self, unet_config: Mapping[str, Any]) -> None:
        """Refuse a ControlNet made for another model family than the UNet's (before anything runs)."""
        ours = self.controlnet.config
        for key in ("cross_attention_dim", "addition_embed_type"):
            if ours.get(key) != unet_config.get(key):
                raise SgidError(
                    f"--controlnet {self.name} does not fit the generator: its {key} is {ours.get(key)}, the UNet's "
                    f"{unet_config.get(key)}; use a ControlNet trained for this model family"
                )

    def __call__(self, backend: Backend, images: Sequence[Image.Image], steps: int) -> StepHook:
        from diffusers.image_processor import VaeImageProcessor

        if self.processor is None:  # diffusers' control_image_processor: RGB, [0, 1], no normalisation
            self.processor = VaeImageProcessor(
                vae_scale_factor=backend.size_multiple, do_convert_rgb=True, do_normalize=False
            )
        condition = self.processor.preprocess(list(images)).to(dtype=torch.float32)
        condition = condition.to(device=backend.device, dtype=self.controlnet.dtype)
        controlnet, scale = self.controlnet, self.scale

        def hook(
            step: int, t: torch.Tensor, model_input: torch.Tensor, unet_kwargs: dict[str, Any], guided: bool
        ) -> dict[str, Any]:
            down, mid = controlnet(
                model_input,
                t,
                encoder_hidden_states=unet_kwargs["encoder_hidden_states"],
                controlnet_cond=torch.cat([condition] * 2) if guided else condition,
                conditioning_scale=scale,
                guess_mode=False,
                added_cond_kwargs=unet_kwargs.get("added_cond_kwargs"),
                return_dict=False,
            )
            return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

        return hook


__all__ = ["ControlNetGuide"]
