"""Training batches: a concept's images, randomly cropped and flipped, with template prompts.

Every random choice of step ``s`` (which images, crop offsets, flips, templates) comes from a generator seeded
with ``derive_seed(seed, key, s, ...)``: a batch is a pure function of the step number. That is what makes a
run resumed from a checkpoint give exactly the embeddings of an uninterrupted one: there is no random stream
whose position would have to be saved.

Images are visited in epochs: each epoch is a seeded permutation of the class's images, and step ``s`` takes
positions ``s*B .. s*B+B-1`` of the concatenated epochs, so every image is seen equally often.

Textual inversion draws from one class's images (the prompt names its token); LoRA fine-tuning draws from every
class's images at once (each image's prompt names its own class: ``"a photo of a <sgid-cat> cat"``) and, with
prior preservation, pairs each image with a stored class image of the same class (:class:`JointImages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from sgid.seeding import derive_seed, generator
from sgid.stages.prompt import tokenize

#: Prompts for an object concept ("{}" is the token), in the spirit of the textual inversion paper's
#: ImageNet-style templates.
TEMPLATES = (
    "a photo of a {}",
    "a photo of the {}",
    "a picture of a {}",
    "a close-up photo of a {}",
    "a cropped photo of the {}",
    "a bright photo of a {}",
    "a dark photo of the {}",
    "a good photo of a {}",
    "a photo of one {}",
    "a photo of a small {}",
    "a photo of a large {}",
    "a rendering of a {}",
)


@dataclass(frozen=True)
class Batch:
    pixel_values: torch.Tensor  # (B, 3, R, R) in [-1, 1]
    input_ids: torch.Tensor  # (B, model_max_length)
    prompts: tuple[str, ...]
    indices: tuple[int, ...] = ()  # which images of the set, in batch order


class ConceptImages:
    """Images resized once so the shorter side is ``resolution``; batches drawn per step.

    ``subject`` is what the templates' ``{}`` becomes: one string for all images (a class's token), or one per
    image (several classes at once).
    """

    def __init__(
        self,
        images: Sequence[Image.Image],
        resolution: int,
        tokenizer: Any,
        subject: str | Sequence[str],
        *,
        seed: int,
        key: str,
        templates: Sequence[str] = TEMPLATES,
    ) -> None:
        if not images:
            raise ValueError("a concept needs at least one image")
        subjects = [subject] * len(images) if isinstance(subject, str) else list(subject)
        if len(subjects) != len(images):
            raise ValueError(f"{len(images)} images but {len(subjects)} subjects")
        self.images = [_fit_shorter_side(image, resolution) for image in images]
        self.resolution = resolution
        self.tokenizer = tokenizer
        self.subjects = subjects
        self.templates = tuple(templates)
        self.seed = seed
        self.key = key

    def __len__(self) -> int:
        return len(self.images)

    def indices(self, step: int, batch_size: int) -> list[int]:
        """Which images step ``step`` uses (epoch-wise seeded permutations)."""
        count = len(self.images)
        chosen: list[int] = []
        for position in range(step * batch_size, (step + 1) * batch_size):
            epoch, offset = divmod(position, count)
            order = torch.randperm(count, generator=generator(derive_seed(self.seed, self.key, epoch, "order")))
            chosen.append(int(order[offset]))
        return chosen

    def batch(self, step: int, batch_size: int) -> Batch:
        rng = generator(derive_seed(self.seed, self.key, step, "batch"))
        return self.make_batch(self.indices(step, batch_size), rng)

    def make_batch(self, indices: Sequence[int], rng: torch.Generator) -> Batch:
        """The images at ``indices``, each cropped, flipped and given a template drawn from ``rng``."""
        pixels: list[torch.Tensor] = []
        prompts: list[str] = []
        for index in indices:
            pixels.append(self._augment(self.images[index], rng))
            template = self.templates[int(torch.randint(len(self.templates), (1,), generator=rng))]
            prompts.append(template.format(self.subjects[index]))
        input_ids = tokenize(self.tokenizer, prompts, return_tensors="pt").input_ids
        return Batch(torch.stack(pixels), input_ids, tuple(prompts), tuple(indices))

    def _augment(self, image: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Random ``resolution``-square crop and horizontal flip (p = 0.5); uint8 -> [-1, 1]."""
        size = self.resolution
        _, height, width = image.shape
        top = int(torch.randint(height - size + 1, (1,), generator=rng))
        left = int(torch.randint(width - size + 1, (1,), generator=rng))
        crop = image[:, top : top + size, left : left + size]
        if bool(torch.rand(1, generator=rng) < 0.5):
            crop = crop.flip(-1)
        return crop.float() / 127.5 - 1.0


class JointImages:
    """Every class's images in one set (``instances``), optionally with prior-preservation class images.

    Step ``s`` takes ``B`` instance images (epoch-wise over all classes) and, with priors, one stored class
    image of the same class for each of them, drawn with ``derive_seed(seed, key, s, "prior")``. The prior
    images come last in the batch: ``pixel_values[:B]`` are the instances, ``pixel_values[B:]`` their priors.
    """

    def __init__(
        self,
        instances: ConceptImages,
        instance_classes: Sequence[str],
        priors: ConceptImages | None = None,
        prior_classes: Sequence[str] = (),
    ) -> None:
        if len(instance_classes) != len(instances):
            raise ValueError("one class per instance image")
        self.instances = instances
        self.instance_classes = list(instance_classes)
        self.priors = priors
        self.prior_of: dict[str, list[int]] = {}
        for index, class_name in enumerate(prior_classes):
            self.prior_of.setdefault(class_name, []).append(index)
        if priors is not None and set(self.prior_of) != set(self.instance_classes):
            raise ValueError("prior preservation needs class images for every class")

    def batch(self, step: int, batch_size: int) -> Batch:
        instances = self.instances.batch(step, batch_size)
        if self.priors is None:
            return instances
        rng = generator(derive_seed(self.instances.seed, self.instances.key, step, "prior"))
        chosen = []
        for index in instances.indices:
            pool = self.prior_of[self.instance_classes[index]]
            chosen.append(pool[int(torch.randint(len(pool), (1,), generator=rng))])
        priors = self.priors.make_batch(chosen, rng)
        return Batch(
            torch.cat([instances.pixel_values, priors.pixel_values]),
            torch.cat([instances.input_ids, priors.input_ids]),
            instances.prompts + priors.prompts,
            instances.indices,
        )


def _fit_shorter_side(image: Image.Image, size: int) -> torch.Tensor:
    """(3, H, W) uint8 tensor of ``image`` scaled (bicubic, aspect kept) so its shorter side is ``size``."""
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
