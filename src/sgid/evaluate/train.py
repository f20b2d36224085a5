"""Training and testing one classifier: seeded, on the CPU or a GPU, with per-epoch progress.

A run is reproducible: :func:`seed_everything` seeds python, numpy and torch; the loader shuffles with its own
seeded generator; swap coins and every random transform of a draw (crop, flip, RandAugment, Random Erasing) are
drawn from ``(seed, epoch, index)``, so results do not depend on ``--workers``.
The optimizer and schedule come from the backbone's :class:`~sgid.evaluate.backbones.Recipe`: SGD with the lr
divided by 10 at 50% and 75% of the epochs (stepped per epoch), or AdamW with the lr decayed linearly to 0 over
the training steps (the HF Trainer default the paper used for ViT and CLIP).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sgid.evaluate.backbones import BACKBONES, Recipe, build_backbone, freeze_for_linear_probe
from sgid.evaluate.data import Example, round_half_up
from sgid.evaluate.mixing import Plan, draw
from sgid.evaluate.perturb import BatchAugment, image_ops, soft_cross_entropy, tensor_ops
from sgid.evaluate.transforms import eval_transform, train_transform
from sgid.progress import bar
from sgid.seeding import global_rngs

#: Convolutions run in NHWC ("channels last"): 1.5× faster for the small CNN on a CPU, and the layout cuDNN prefers.
CHANNELS_LAST = torch.channels_last


def _to_device(images: torch.Tensor, device: str) -> torch.Tensor:
    return images.to(device, memory_format=CHANNELS_LAST)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def draw_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one draw's random transforms (crop, flip, RandAugment, Random Erasing): they depend on the
    draw alone, never on which process (the main one or a DataLoader worker) makes it or on what it made before."""
    return int(np.random.default_rng([seed % 2**63, epoch, index, 1]).integers(2**63))


class ImageCache:
    """Decoded images kept in memory up to a pixel budget, so small datasets are decoded once per run."""

    def __init__(self, max_pixels: int = 256_000_000) -> None:
        self.max_pixels = max_pixels
        self.pixels = 0
        self._images: dict[str, Image.Image] = {}

    def get(self, example: Example) -> Image.Image:
        image = self._images.get(example.key)
        if image is None:
            image = example.load()
            size = image.width * image.height
            if self.pixels + size <= self.max_pixels:
                self._images[example.key] = image
                self.pixels += size
        return image


class TrainingSet(Dataset):
    """The slots of a plan; each draw yields ``(tensor, label, 1 if a generated image was drawn else 0)``."""

    def __init__(
        self, plan: Plan, transform: Callable[[Image.Image], torch.Tensor], seed: int, cache: ImageCache | None = None
    ) -> None:
        self.plan = plan
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.cache = cache or ImageCache()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan.slots)

    def example(self, index: int) -> Example:
        """The example drawn for ``index`` in the current epoch (swap: a seeded coin per draw)."""
        slot = self.plan.slots[index]
        if not slot.alternatives:
            return slot.example
        rng = np.random.default_rng([self.seed % 2**63, self.epoch, index])
        return draw(slot, self.plan.swap_probability, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        example = self.example(index)
        with global_rngs(draw_seed(self.seed, self.epoch, index)):
            image = self.transform(self.cache.get(example))
        return image, example.label, int(example.generated)


class EvalSet(Dataset):
    def __init__(self, examples: Sequence[Example], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.examples = examples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.examples[index]
        return self.transform(example.load()), example.label


@dataclass(frozen=True)
class TrainSettings:
    """Everything about training that is the same for every method of an evaluation."""

    backbone: str
    image_size: int
    pad_crop: bool  # pad 4 + random crop (small images at their own size) instead of a random resized crop
    recipe: Recipe  # resolved for the dataset, with any epoch / batch-size / lr overrides
    pretrained: bool = True
    weights: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    linear_probe: bool = False
    device: str = "cpu"
    workers: int = 0
    quiet: bool = False

    def describe(self) -> str:
        """One line for the report: optimizer, schedule, epochs, batch, input and crop."""
        r = self.recipe
        if r.optimizer == "sgd":
            optimizer = f"SGD lr {r.lr:g}, momentum {r.momentum:g}, weight decay {r.weight_decay:g}"
        else:
            optimizer = f"AdamW lr {r.lr:g}, weight decay {r.weight_decay:g}"
        if r.lr_grid:
            optimizer += f" (lr chosen on validation from {', '.join(f'{v:g}' for v in r.lr_grid)})"
        schedule = (
            f"lr ×{r.gamma:g} at {' and '.join(f'{m:.0%}' for m in r.milestones)} of the epochs"
            if r.schedule == "multistep"
            else "lr decayed linearly to 0"
        )
        crop = "pad-4 random crop" if self.pad_crop else "random resized crop"
        probe = ", linear probe" if self.linear_probe else ""
        return (
            f"{self.backbone}{probe}: {optimizer}; {schedule}; {r.epochs} epochs, batch {r.batch_size}; "
            f"{self.image_size} px, {crop} + horizontal flip"
        )


@dataclass
class FitResult:
    model: nn.Module
    lr: float
    train_loss: float  # mean loss of the last epoch
    draws: int  # training images drawn over all epochs
    generated_draws: int  # of which generated
    seconds: float


def _loader(
    dataset: Dataset,
    batch_size: int,
    settings: TrainSettings,
    *,
    shuffle: bool,
    seed: int = 0,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=settings.workers,
        pin_memory=settings.device.startswith("cuda"),
    )


def make_optimizer(
    model: nn.Module, recipe: Recipe, lr: float, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, bool]:
    """The optimizer, its schedule and whether the schedule steps per batch (True) or per epoch (False)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    if recipe.schedule == "multistep":
        milestones = sorted({round_half_up(f * recipe.epochs) for f in recipe.milestones})
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, recipe.gamma), False
    total = max(1, recipe.epochs * steps_per_epoch)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total)), True


def build_model(settings: TrainSettings, num_classes: int) -> nn.Module:
    spec = BACKBONES.get(settings.backbone)
    model = build_backbone(
        settings.backbone,
        num_classes,
        image_size=settings.image_size,
        pretrained=settings.pretrained,
        weights=settings.weights,
        arch=settings.arch,
    )
    if settings.linear_probe:
        freeze_for_linear_probe(model, spec)
    return model


def fit(
    plan: Plan,
    num_classes: int,
    perturbations: Sequence[str],
    settings: TrainSettings,
    seed: int,
    *,
    lr: float | None = None,
    desc: str = "train",
    on_epoch: Callable[[int, float, int], None] | None = None,
) -> FitResult:
    """Train a fresh classifier on ``plan`` with ``perturbations``; ``seed`` fixes initialisation and order.
    ``on_epoch(epoch, seconds so far, images drawn so far)`` is called after every epoch (work estimates)."""
    spec = BACKBONES.get(settings.backbone)
    recipe = settings.recipe
    lr = recipe.lr if lr is None else lr
    seed_everything(seed)
    model = build_model(settings, num_classes).to(settings.device).to(memory_format=CHANNELS_LAST)
    transform = train_transform(
        settings.image_size,
        settings.pad_crop,
        spec.mean,
        spec.std,
        image_ops=image_ops(perturbations),
        tensor_ops=tensor_ops(perturbations),
    )
    dataset = TrainingSet(plan, transform, seed)
    loader = _loader(dataset, recipe.batch_size, settings, shuffle=True, seed=seed)
    optimizer, scheduler, per_step = make_optimizer(model, recipe, lr, len(loader))
    moex_module = model.get_submodule(spec.moex_layer) if "moex" in perturbations else None
    augment = BatchAugment(perturbations, num_classes, moex_module, spec.moex_channel_dim)
    started = time.perf_counter()
    draws = generated = 0
    loss_sum, loss_count = 0.0, 0
    with bar(recipe.epochs, desc, "epoch", settings.quiet, leave=False) as progress:
        for epoch in range(recipe.epochs):
            model.train()
            dataset.set_epoch(epoch)
            loss_sum, loss_count = 0.0, 0
            for images, labels, is_generated in loader:
                images, labels = _to_device(images, settings.device), labels.to(settings.device)
                images, targets, context = augment(images, labels)
                with context:
                    logits = model(images)
                loss = soft_cross_entropy(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if per_step:
                    scheduler.step()
                loss_sum += loss.item() * len(labels)
                loss_count += len(labels)
                draws += len(labels)
                generated += int(is_generated.sum())
            if not per_step:
                scheduler.step()
            progress.set_postfix(loss=f"{loss_sum / max(loss_count, 1):.3f}")
            progress.update(1)
            if on_epoch is not None:
                on_epoch(epoch, time.perf_counter() - started, draws)
    return FitResult(model, lr, loss_sum / max(loss_count, 1), draws, generated, time.perf_counter() - started)


@torch.no_grad()
def predict(model: nn.Module, examples: Sequence[Example], settings: TrainSettings) -> np.ndarray:
    """Predicted class indices for ``examples`` with the evaluation transform."""
    spec = BACKBONES.get(settings.backbone)
    loader = _loader(
        EvalSet(examples, eval_transform(settings.image_size, spec.mean, spec.std)),
        max(64, 2 * settings.recipe.batch_size),
        settings,
        shuffle=False,
    )
    model.eval()
    predictions = [model(_to_device(images, settings.device)).argmax(dim=1).cpu() for images, _ in loader]
    return torch.cat(predictions).numpy() if predictions else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Accuracy:
    accuracy: float  # fraction correct
    per_class: tuple[float | None, ...]  # per class index; None if the class has no test image
    total: int


def accuracy_of(predictions: np.ndarray, labels: Sequence[int], num_classes: int) -> Accuracy:
    truth = np.asarray(labels, dtype=np.int64)
    correct = predictions == truth
    hits = np.bincount(truth[correct], minlength=num_classes)
    counts = np.bincount(truth, minlength=num_classes)
    per_class = tuple(float(h / c) if c else None for h, c in zip(hits, counts, strict=True))
    return Accuracy(float(correct.mean()) if len(truth) else float("nan"), per_class, int(len(truth)))


def test_accuracy(model: nn.Module, examples: Sequence[Example], num_classes: int, settings: TrainSettings) -> Accuracy:
    return accuracy_of(predict(model, examples, settings), [ex.label for ex in examples], num_classes)
