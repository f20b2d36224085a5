"""The basic image transforms every model is trained with, and the evaluation transform (paper, appendix I).

Training: a random horizontal flip and, for small square images trained at their own size (CIFAR, 32×32), a
random crop from the image padded by 4 pixels on each side; otherwise a random resized crop to the input size
(torchvision's defaults, scale (0.08, 1), as in the HF image-classification example). Evaluation: resize the
shorter side to the input size and take the centre crop (an exact resize for square images).

Per-image perturbations (RandAugment on the image, Random Erasing on the normalised tensor) are inserted by
:func:`train_transform` at the places their reference implementations use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

Transform = Callable[[Any], Any]


def to_tensor(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def basic_augmentation(image_size: int, pad_crop: bool) -> v2.Compose:
    """Horizontal flip + (pad 4, random crop) or random resized crop."""
    if pad_crop:
        crop: list[Any] = [v2.Resize((image_size, image_size), antialias=True), v2.RandomCrop(image_size, padding=4)]
    else:
        crop = [v2.RandomResizedCrop(image_size, antialias=True)]
    return v2.Compose([*crop, v2.RandomHorizontalFlip()])


def train_transform(
    image_size: int,
    pad_crop: bool,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    image_ops: Sequence[Transform] = (),
    tensor_ops: Sequence[Transform] = (),
) -> v2.Compose:
    """basic augmentation → ``image_ops`` (on PIL images) → tensor + normalise → ``tensor_ops``."""
    return v2.Compose([basic_augmentation(image_size, pad_crop), *image_ops, to_tensor(mean, std), *tensor_ops])


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the shorter side to ``image_size``, centre crop, normalise."""
    return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), to_tensor(mean, std)])


def rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
