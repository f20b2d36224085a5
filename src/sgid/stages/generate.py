"""Generation from ready embeddings over one diffusers pipeline: ``generator(images, embeds, negative, g, ...)``.

The recipes themselves belong to the backends (:mod:`sgid.backends`): these callables wrap a pipeline in the
backend of its family and hand it (B, 77, D) prompt embeddings, as earlier versions of sgid did. The guidance
is one scale per sample: eps = eps_u + g_i·(eps_c − eps_u). With a single g > 1 for the whole batch,
:class:`Img2ImgGenerator` is exactly ``StableDiffusionImg2ImgPipeline.__call__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from sgid.backends import BACKENDS, Backend, Conditioning, GenerationOutput, GenerationRequest


def backend_for_pipeline(pipe: Any, mode: str, **options: Any) -> Backend:
    """The backend whose family runs ``pipe``'s class in ``mode``."""
    for name in BACKENDS:
        family = BACKENDS.get(name)
        if family.pipelines.get(mode) == type(pipe).__name__:
            return family(pipe, mode, **options)
    raise ValueError(f"no backend runs a {type(pipe).__name__} in {mode} mode")


class TensorGenerator:
    """A backend's ``mode`` over a pipeline, taking ready embeddings."""

    mode: ClassVar[str] = ""

    def __init__(self, pipe: Any, **options: Any) -> None:
        self.backend = backend_for_pipeline(pipe, self.mode, **options)

    @property
    def resolution(self) -> int:
        return self.backend.resolution

    @property
    def size_multiple(self) -> int:
        return self.backend.size_multiple

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
        conditioning = Conditioning(prompt_embeds, negative_embeds)
        return self.backend.generate(GenerationRequest(images, conditioning, guidance, strength, steps, seeds, size))


class Img2ImgGenerator(TensorGenerator):
    """SGID's image-to-image step (paper eq. 3), batched, per-sample g."""

    mode = "img2img"


class Text2ImgGenerator(TensorGenerator):
    """Text-to-image (the paper's Text2Img baseline): no source pixels, per-sample guidance."""

    mode = "text2img"


class InstructPix2PixGenerator(TensorGenerator):
    """InstructPix2Pix: diffusers' own pipeline, one generator per image, text and image guidance."""

    mode = "instruct"
