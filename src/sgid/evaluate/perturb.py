"""The perturbation baselines, with the SGID paper's settings (appendix I), applied on the fly.

==================  =========================================================================================
``random_erasing``  Random Erasing (Zhong et al. 2020): p=0.5, area s ∈ [s_l=0.02, s_h=0.4], aspect ratio
                    r ∈ [r1=0.3, 1/r1], one rectangle filled with the mean pixel (zero after normalisation).
                    timm's ``RandomErasing`` on the normalised tensor, on the CPU (its default device is cuda).
                    Unlike the official code (aspect drawn uniformly, 100 attempts) timm draws the aspect
                    log-uniformly and tries 10 times.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torchvision.transforms import v2

from sgid.errors import require
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
        {"probability": 0.5, "min_area": 0.02, "max_area": 0.4, "min_aspect": 0.3, "mode": "const"},
        "Zhong et al. 2020 (p=0.5, s_h=0.4, r1=0.3)",
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


def random_erasing(probability: float | None = None) -> Any:
    """timm's RandomErasing with the paper's settings, on the CPU (``probability`` overrides p=0.5)."""
    random_erasing_module = require("timm.data.random_erasing", "eval")
    p = PERTURBATIONS.get("random_erasing").params
    return random_erasing_module.RandomErasing(
        probability=p["probability"] if probability is None else probability,
        min_area=p["min_area"],
        max_area=p["max_area"],
        min_aspect=p["min_aspect"],
        mode=p["mode"],
        device="cpu",
    )


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
