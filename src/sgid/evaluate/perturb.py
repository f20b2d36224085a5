"""The perturbation baselines, with the SGID paper's settings (appendix I), applied on the fly.

==================  =========================================================================================
``random_erasing``  Random Erasing (Zhong et al. 2020) as the official code (zhunzhong07/Random-Erasing) does it,
                    which the paper follows: with p=0.5, up to 100 attempts to draw an area s ∈ [s_l=0.02,
                    s_h=0.4] of the image and an aspect ratio r ∈ [r1=0.3, 1/r1], both uniformly, until the
                    rectangle fits; it is filled with the official code's mean (0.4914, 0.4822, 0.4465) written
                    into the *normalised* tensor (so the patch is not the mean pixel but a light grey-ish one).
``cutmix``          CutMix (Yun et al. 2019): α=1, applied to a batch with probability 0.5; torchvision's
                    ``v2.CutMix`` (box area → exact λ; pairs each image with its neighbour in the shuffled batch).
                    Loss λ·CE(y_a) + (1−λ)·CE(y_b), as soft targets.
``randaugment``     RandAugment (Cubuk et al. 2020): N=2 operations at magnitude M=9, torchvision's defaults.
``moex``            MoEx (Li et al. 2021): with probability p=0.25 per batch, the PONO moments (mean and std over
                    channels, per position) of an early feature map are exchanged with those of a permuted batch;
                    loss λ·CE(y_a) + (1−λ)·CE(y_b) with λ=0.5 (official code: Boyiliee/MoEx).
==================  =========================================================================================

Stages: ``image`` operations run on the PIL image after the basic flip/crop, ``tensor`` ones on the normalised
tensor, ``batch`` ones on the collated batch, ``feature`` ones inside the forward pass. Every random choice uses
the global python/torch generators, which each run seeds (:func:`sgid.evaluate.train.seed_everything`).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torchvision.transforms import v2

from sgid.registry import Registry

Stage = Literal["image", "tensor", "batch", "feature"]


@dataclass(frozen=True)
class Perturbation:
    name: str
    stage: Stage
    params: dict[str, Any] = field(default_factory=dict)
    citation: str = ""


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation")
PERTURBATIONS.add(
    "random_erasing",
    Perturbation(
        "random_erasing",
        "tensor",
        {"probability": 0.5, "sl": 0.02, "sh": 0.4, "r1": 0.3, "attempts": 100, "fill": (0.4914, 0.4822, 0.4465)},
        "Zhong et al. 2020, official code (p=0.5, s_h=0.4, r1=0.3)",
    ),
)
PERTURBATIONS.add(
    "cutmix",
    Perturbation("cutmix", "batch", {"alpha": 1.0, "probability": 0.5}, "Yun et al. 2019 (alpha=1, cutmix prob 0.5)"),
)
PERTURBATIONS.add(
    "randaugment", Perturbation("randaugment", "image", {"num_ops": 2, "magnitude": 9}, "Cubuk et al. 2020 (N=2, M=9)")
)
PERTURBATIONS.add(
    "moex",
    Perturbation(
        "moex",
        "feature",
        {"lam": 0.5, "probability": 0.25, "norm": "pono", "epsilon": 1e-5},
        "Li et al. 2021 (lambda=0.5, p=0.25, PONO)",
    ),
)


@dataclass(frozen=True)
class RandomErasing:
    """The official Random Erasing (Zhong et al. 2020, ``transforms.RandomErasing``) on a normalised (C, H, W)
    tensor, drawing from python's ``random`` as the official code does (each run seeds it). Like the official
    code it erases in place and returns the tensor."""

    probability: float = 0.5
    sl: float = 0.02
    sh: float = 0.4
    r1: float = 0.3
    attempts: int = 100
    fill: tuple[float, ...] = (0.4914, 0.4822, 0.4465)

    def draw(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """The random choices: (top, left, h, w) of the rectangle to erase, or None (coin, or nothing fitted)."""
        if random.uniform(0, 1) > self.probability:
            return None
        for _ in range(self.attempts):
            target_area = random.uniform(self.sl, self.sh) * height * width
            aspect_ratio = random.uniform(self.r1, 1 / self.r1)
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < width and h < height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        return None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        box = self.draw(image.shape[-2], image.shape[-1])
        if box is not None:
            top, left, h, w = box
            channels = image.shape[-3]
            fill = torch.tensor(self.fill[:channels] if channels == len(self.fill) else self.fill[:1] * channels)
            image[..., top : top + h, left : left + w] = fill.to(image.dtype).view(-1, 1, 1)
        return image


def random_erasing(probability: float | None = None) -> RandomErasing:
    """Random Erasing with the paper's settings (the official code's algorithm); ``probability`` overrides 0.5."""
    p = PERTURBATIONS.get("random_erasing").params
    chance = p["probability"] if probability is None else probability
    return RandomErasing(chance, p["sl"], p["sh"], p["r1"], p["attempts"], tuple(p["fill"]))


def randaugment() -> v2.RandAugment:
    p = PERTURBATIONS.get("randaugment").params
    return v2.RandAugment(num_ops=p["num_ops"], magnitude=p["magnitude"])


def cutmix() -> v2.CutMix:
    """torchvision's batch-level CutMix with the paper's alpha (the 0.5 probability is drawn by the caller)."""
    return v2.CutMix(alpha=PERTURBATIONS.get("cutmix").params["alpha"])


_IMAGE_OPS = {"randaugment": randaugment}
_TENSOR_OPS = {"random_erasing": random_erasing}


def image_ops(names: Sequence[str]) -> list[Any]:
    """The per-image operations (on PIL images) among ``names``, in the given order."""
    return [_IMAGE_OPS[n]() for n in names if PERTURBATIONS.get(n).stage == "image"]


def tensor_ops(names: Sequence[str]) -> list[Any]:
    """The per-image operations on normalised tensors among ``names``."""
    return [_TENSOR_OPS[n]() for n in names if PERTURBATIONS.get(n).stage == "tensor"]


def moex(x: torch.Tensor, swap_index: torch.Tensor, channel_dim: int = 1, epsilon: float = 1e-5) -> torch.Tensor:
    """Moment exchange with PONO: normalise every position of ``x`` over its channels and give it the mean and
    std of the same position in ``x[swap_index]`` (official ``moex(..., norm_type='pono')``; unbiased variance)."""
    dtype = x.dtype
    x = x.float()
    mean = x.mean(dim=channel_dim, keepdim=True)
    std = x.var(dim=channel_dim, keepdim=True).add(epsilon).sqrt()
    scale = std[swap_index] / std
    return (x * scale + (mean[swap_index] - mean * scale)).to(dtype)


@contextlib.contextmanager
def moex_at(module: nn.Module, swap_index: torch.Tensor, channel_dim: int, epsilon: float) -> Iterator[None]:
    """Within the block, MoEx rewrites ``module``'s output on every forward pass."""

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return moex(output, swap_index.to(output.device), channel_dim, epsilon)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class BatchAugment:
    """The batch- and feature-level perturbations of one method (CutMix, MoEx).

    ``images, targets, context = batch_augment(images, labels)``; run the forward pass inside ``context`` and
    train on the soft ``targets`` (rows sum to 1) with :func:`soft_cross_entropy`.
    """

    def __init__(
        self, names: Sequence[str], num_classes: int, moex_module: nn.Module | None = None, moex_channel_dim: int = 1
    ) -> None:
        self.num_classes = num_classes
        self.cutmix = PERTURBATIONS.get("cutmix").params if "cutmix" in names else None
        self.moex = PERTURBATIONS.get("moex").params if "moex" in names else None
        self._cutmix = cutmix() if self.cutmix else None
        self.moex_module = moex_module
        self.moex_channel_dim = moex_channel_dim
        if self.moex and moex_module is None:
            raise ValueError("MoEx needs the module whose output it exchanges moments of")

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, contextlib.AbstractContextManager[None]]:
        targets = nn.functional.one_hot(labels, self.num_classes).float()
        if self.cutmix and self._cutmix is not None and float(torch.rand(())) < self.cutmix["probability"]:
            images, targets = self._cutmix(images, targets)
        context: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if self.moex and self.moex_module is not None and float(torch.rand(())) < self.moex["probability"]:
            swap_index = torch.randperm(images.shape[0])
            lam = self.moex["lam"]
            targets = lam * targets + (1 - lam) * targets[swap_index]
            context = moex_at(self.moex_module, swap_index, self.moex_channel_dim, self.moex["epsilon"])
        return images, targets, context


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets; equals CE(y) for one-hot targets and λ·CE(y_a)+(1−λ)·CE(y_b) for
    mixed ones."""
    return -(targets * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
