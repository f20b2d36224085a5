"""The perturbation baselines materialised as images (``sgid augment --method randaugment|random_erasing|cutmix``).

Each perturbation is the very implementation ``sgid evaluate`` trains with (:mod:`sgid.evaluate.perturb`, the
paper's settings), applied to one source image. Its random choices are drawn apart from applying them, as
torchvision v2 and albumentations do: :meth:`ImagePerturbation.sample` runs the implementation's own sampler under the
item's seed (:func:`sgid.seeding.global_rngs`) on a stand-in of the image's size and returns the choices as JSON
(they go into the manifest); :meth:`ImagePerturbation.apply` applies them to the pixels. Sampling depends only on the
seed and the image size, so ``apply(image, sample(size, seed))`` equals running the implementation on the image
under that seed (tests pin this, byte for byte).

===================  ==========================================================================================
``randaugment``      torchvision ``v2.RandAugment(num_ops=2, magnitude=9)``; records each operation and magnitude
``random_erasing``   the official Random Erasing (area [0.02, 0.4], aspect [0.3, 1/0.3], up to 100 tries; fill
                     (0.4914, 0.4822, 0.4465) written into the tensor normalised with the ImageNet statistics the
                     scratch ResNet-50 uses, i.e. the pixel mean + value·std); records the box and fill
``cutmix``           torchvision ``v2.CutMix(alpha=1)`` on the pair (partner, image): a box of the partner pasted
                     into the image; records the box and λ (the image's share of the area, its label weight)
===================  ==========================================================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from sgid.registry import Registry
from sgid.seeding import global_rngs

#: The normalisation of the from-scratch backbones (sgid.evaluate.backbones), in which Random Erasing fills.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def erasing_fill() -> list[int]:
    """The pixel Random Erasing writes: its fill, written into the normalised tensor, denormalised."""
    from sgid.evaluate.perturb import PERTURBATIONS

    values = PERTURBATIONS.get("random_erasing").params["fill"]
    return [round(255 * (m + v * s)) for m, v, s in zip(IMAGENET_MEAN, values, IMAGENET_STD, strict=True)]


def _stand_in(size: tuple[int, int], batch: int | None = None) -> torch.Tensor:
    """A zero-memory tensor of the image's shape (C, H, W) or (B, C, H, W): samplers read only its size."""
    width, height = size
    shape = (3, height, width) if batch is None else (batch, 3, height, width)
    return torch.zeros((1,) * len(shape), dtype=torch.uint8).expand(*shape)


class ImagePerturbation(ABC):
    """One materialised perturbation: ``sample`` its random choices, ``apply`` them."""

    name: ClassVar[str]
    #: what the manifest's ``generator_model`` records
    implementation: ClassVar[str]
    #: whether ``apply`` takes a second image (CutMix's partner)
    needs_partner: ClassVar[bool] = False

    @abstractmethod
    def sample(self, size: tuple[int, int], seed: int) -> dict[str, Any]:
        """The random choices for an image of ``size`` (width, height), as JSON-able values."""

    @abstractmethod
    def apply(self, image: Image.Image, params: dict[str, Any], partner: Image.Image | None = None) -> Image.Image:
        """``image`` (8-bit RGB) with the perturbation ``params`` describe; the same size."""


#: Perturbations by ``--method`` name.
IMAGE_PERTURBATIONS: Registry[type[ImagePerturbation]] = Registry("perturbation")


@IMAGE_PERTURBATIONS.register("randaugment")
class RandAugment(ImagePerturbation):
    name = "randaugment"
    implementation = "torchvision.transforms.v2.RandAugment"

    def __init__(self) -> None:
        from sgid.evaluate.perturb import randaugment

        self.transform = randaugment()

    def sample(self, size: tuple[int, int], seed: int) -> dict[str, Any]:
        """RandAugment's own ``forward`` (operations and signed magnitudes drawn for this size), each
        operation recorded instead of run."""
        from sgid.evaluate.perturb import randaugment

        ops: list[dict[str, Any]] = []

        def record(image: Any, transform_id: str, magnitude: float, **_: Any) -> Any:
            ops.append({"op": transform_id, "magnitude": magnitude})
            return image

        sampler = randaugment()
        sampler._apply_image_or_video_transform = record
        with global_rngs(seed):
            sampler(_stand_in(size))
        return {"ops": ops}

    def apply(self, image: Image.Image, params: dict[str, Any], partner: Image.Image | None = None) -> Image.Image:
        t = self.transform
        for op in params["ops"]:
            image = t._apply_image_or_video_transform(
                image, op["op"], float(op["magnitude"]), interpolation=t.interpolation, fill=t._fill
            )
        return image


@IMAGE_PERTURBATIONS.register("random_erasing")
class RandomErasing(ImagePerturbation):
    name = "random_erasing"
    implementation = "sgid.evaluate.perturb.RandomErasing (the official algorithm)"

    def sample(self, size: tuple[int, int], seed: int) -> dict[str, Any]:
        from sgid.evaluate.perturb import random_erasing

        width, height = size
        # The eraser's own draws, applied always (p=1): the caller flips the p coin.
        with global_rngs(seed):
            box = random_erasing(probability=1.0).draw(height, width)
        if box is None:  # no box fitted in 100 attempts (tiny images): the image is left as it is
            return {"box": None, "fill": erasing_fill()}
        top, left, h, w = box
        return {"box": [left, top, left + w, top + h], "fill": erasing_fill()}

    def apply(self, image: Image.Image, params: dict[str, Any], partner: Image.Image | None = None) -> Image.Image:
        if params["box"] is None:
            return image.copy()
        x1, y1, x2, y2 = params["box"]
        pixels = np.array(image)
        pixels[y1:y2, x1:x2] = np.asarray(params["fill"], dtype=np.uint8)
        return Image.fromarray(pixels, "RGB")


@IMAGE_PERTURBATIONS.register("cutmix")
class CutMix(ImagePerturbation):
    name = "cutmix"
    implementation = "torchvision.transforms.v2.CutMix"
    needs_partner = True

    def __init__(self) -> None:
        from sgid.evaluate.perturb import cutmix

        self.transform = cutmix()

    def sample(self, size: tuple[int, int], seed: int) -> dict[str, Any]:
        with global_rngs(seed):
            params = self.transform.make_params([_stand_in(size, batch=2)])
        return {"box": [int(v) for v in params["box"]], "lam": float(params["lam_adjusted"])}

    def apply(self, image: Image.Image, params: dict[str, Any], partner: Image.Image | None = None) -> Image.Image:
        """The pair (partner, image) through CutMix: the image keeps its pixels outside the box and gets the
        partner's inside it (v2.CutMix pairs each image with the previous one in the batch)."""
        if partner is None:
            raise ValueError("CutMix needs a partner image")
        from sgid.images import resize

        batch = torch.stack(
            [torch.from_numpy(np.array(resize(partner, image.size))), torch.from_numpy(np.array(image))]
        ).permute(0, 3, 1, 2)
        mixed = self.transform.transform(batch, {"labels": None, "batch_size": 2, "box": tuple(params["box"])})
        return Image.fromarray(mixed[1].permute(1, 2, 0).contiguous().numpy(), "RGB")
