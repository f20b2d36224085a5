"""Classifier backbones by name, each with the training recipe the SGID paper uses for it (appendix I).

=================  ===========================================================================================
``resnet50``       ResNet-50 from scratch. SGD lr 0.1, momentum 0.9, weight decay 5e-4, lr ÷10 at 50% and 75% of
                   the epochs (150th/225th of 300), batch 256.
``resnet18``       ResNet-18 from scratch (004's backbone), same recipe; 200 epochs as in 004.
``wrn28_10``       WideResNet-28-10 from scratch, same recipe with batch 64; like ResNet-50 at the images' own size
                   for small squares (CIFAR, 32×32) and 224×224 otherwise (appendix I). Its CIFAR architecture
                   is kept (stride-1 stem, global average pooling), so at 224 px it costs about 49× the 32 px
                   FLOPs (≈ 0.26 TFLOP per image forward); ``--image-size 32`` trains it at 32 px instead.
``vit_b16_in21k``  ViT-B/16 pre-trained on ImageNet-21k (google/vit-base-patch16-224-in21k, timm
                   ``vit_base_patch16_224.orig_in21k``), fine-tuned with AdamW, batch 64, 15 epochs, lr chosen on
                   validation from {1e-4, 3e-4, 1e-3, 3e-3}; on CIFAR-10/100 the HF example defaults lr 5e-5, 3 epochs.
                   No weight decay and a linear decay of the lr to 0: the HF Trainer defaults the paper used.
``clip_vit_b32``   OpenCLIP ViT-B/32 pre-trained on LAION-2B (``laion2b_s34b_b79k``, 34B samples seen), image
                   tower + linear head, fine-tuned (or a linear probe) with the ViT recipe.
``zero_shot_clip`` The same CLIP model classifying by text prompts, untrained: a reference row (004).
``small_cnn``      A four-conv network (width 16) that trains on a CPU in seconds (tests, the digits experiment);
                   the from-scratch SGD recipe with 60 epochs and batch 32.
=================  ===========================================================================================

From-scratch networks keep the images' own size when they are small squares (CIFAR, 32×32) and replace the
ResNet stem by a 3×3 stride-1 convolution without max-pooling there, as CIFAR ResNets do. Pre-trained weights
load by name (from the local Hugging Face / OpenCLIP cache; nothing is downloaded when HF_HUB_OFFLINE=1) or from a
local file given as ``weights``; when they are unavailable the error is one line. ``arch`` overrides the
architecture (tests build tiny random-weight configs this way); the built module records everything needed to
rebuild it in ``model.sgid_build`` (see :mod:`sgid.evaluate.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sgid.errors import ModelLoadError, SgidError, require
from sgid.evaluate.nets import SmallCNN, WideResNet
from sgid.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # google/vit-base-patch16-224-in21k's image processor
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VIT_TIMM_NAME = "vit_base_patch16_224.orig_in21k"
CLIP_ARCH = "ViT-B-32"
CLIP_PRETRAINED = "laion2b_s34b_b79k"
CIFAR_DATASETS = frozenset({"cifar10", "cifar100"})
#: Images whose sides are at most this are trained at their own size by from-scratch networks (CIFAR protocol).
SMALL_IMAGE = 64


@dataclass(frozen=True)
class Recipe:
    """How a backbone is trained: optimizer, schedule, epochs, batch size, learning-rate choice."""

    optimizer: Literal["sgd", "adamw"]
    lr: float
    epochs: int
    batch_size: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: Literal["multistep", "linear"] = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the epochs at which the lr is multiplied by gamma
    gamma: float = 0.1
    lr_grid: tuple[float, ...] = ()  # if not empty, the lr is chosen from these on validation
    cifar_lr: float | None = None  # CIFAR-10/100 override (fixed lr, no search)
    cifar_epochs: int | None = None

    def for_dataset(self, dataset: str) -> Recipe:
        """The recipe for ``dataset``: CIFAR-10/100 use the fixed lr and epochs when the backbone has them."""
        if dataset.lower() in CIFAR_DATASETS and self.cifar_lr is not None:
            return replace(self, lr=self.cifar_lr, epochs=self.cifar_epochs or self.epochs, lr_grid=())
        return self


Builder = Callable[[int, int, bool, "str | None", Mapping[str, Any]], nn.Module]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    build: Builder  # (num_classes, image_size, pretrained, weights, arch) -> module returning logits
    recipe: Recipe | None  # None: not trained (zero-shot reference)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int  # default input size
    native_small: bool  # train at the images' own size when they are small squares (from-scratch CIFAR protocol)
    moex_layer: str  # dotted name of the module whose output MoEx re-normalises (an early feature map)
    moex_channel_dim: int  # the channel axis of that output: 1 for (B, C, H, W), -1 for tokens (B, N, C)
    head: str  # the classification layer (the only one trained by a linear probe)
    pretrained: bool

    def resolve_image_size(self, native: tuple[int, int] | None, requested: int | None = None) -> int:
        """The training/eval input size: ``requested``, else the native size of small square images for
        from-scratch networks, else the backbone's default."""
        if requested is not None:
            return requested
        if self.native_small and native and native[0] == native[1] and native[0] <= SMALL_IMAGE:
            return native[0]
        return self.image_size


BACKBONES: Registry[BackboneSpec] = Registry("backbone")

SCRATCH_SGD = Recipe(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=300, batch_size=256)
FINETUNE_ADAMW = Recipe(
    optimizer="adamw",
    lr=1e-4,
    weight_decay=0.0,
    schedule="linear",
    epochs=15,
    batch_size=64,
    lr_grid=(1e-4, 3e-4, 1e-3, 3e-3),
    cifar_lr=5e-5,
    cifar_epochs=3,
)


def build_backbone(
    name: str,
    num_classes: int,
    *,
    image_size: int,
    pretrained: bool = True,
    weights: str | None = None,
    arch: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build backbone ``name`` with a ``num_classes``-way head; ``model.sgid_build`` records how."""
    spec = BACKBONES.get(name)
    if num_classes < 1:
        raise SgidError(f"a classifier needs at least one class, got {num_classes}")
    model = spec.build(num_classes, image_size, pretrained and spec.pretrained, weights, dict(arch or {}))
    model.sgid_build = {  # type: ignore[assignment]
        "backbone": name,
        "num_classes": num_classes,
        "image_size": image_size,
        "arch": dict(arch or {}),
    }
    return model


def head_module(model: nn.Module, spec: BackboneSpec) -> nn.Module:
    return model.get_submodule(spec.head)


def freeze_for_linear_probe(model: nn.Module, spec: BackboneSpec) -> None:
    """Train only the head: every other parameter stops requiring gradients."""
    head_params = {id(p) for p in head_module(model, spec).parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) in head_params)


# -- builders ------------------------------------------------------------------------------------------------


def _torchvision_resnet(depth: int) -> Builder:
    def build(
        num_classes: int, image_size: int, pretrained: bool, weights: str | None, arch: Mapping[str, Any]
    ) -> nn.Module:
        del pretrained, weights  # trained from scratch (paper)
        import torchvision

        factory = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth]
        model = factory(weights=None, num_classes=num_classes)
        if arch.get("cifar_stem", image_size <= SMALL_IMAGE):
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        return model

    return build


def _build_wrn(
    num_classes: int, image_size: int, pretrained: bool, weights: str | None, arch: Mapping[str, Any]
) -> nn.Module:
    del image_size, pretrained, weights
    return WideResNet(
        num_classes,
        depth=int(arch.get("depth", 28)),
        widen=int(arch.get("widen", 10)),
        dropout=float(arch.get("dropout", 0.0)),
    )


def _build_small_cnn(
    num_classes: int, image_size: int, pretrained: bool, weights: str | None, arch: Mapping[str, Any]
) -> nn.Module:
    del image_size, pretrained, weights
    return SmallCNN(num_classes, width=int(arch.get("width", 16)))


def _load_error(what: str, source: str, exc: BaseException) -> ModelLoadError:
    from sgid.models.loading import short_reason

    return ModelLoadError(
        f"cannot load pre-trained weights for {what} from {source}: {short_reason(exc)}; "
        f"put them in the local cache or pass --weights PATH to a local file"
    )


def _build_vit(
    num_classes: int, image_size: int, pretrained: bool, weights: str | None, arch: Mapping[str, Any]
) -> nn.Module:
    timm = require("timm", "eval")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "img_size": image_size, **arch}
    if not pretrained:
        return timm.create_model("vit_base_patch16_224", pretrained=False, **kwargs)
    name, overlay = VIT_TIMM_NAME, None
    if weights and Path(weights).exists():
        overlay = {"file": str(Path(weights).resolve())}
    elif weights:
        name = weights  # another timm name with a pretrained tag
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub, file and state-dict errors all mean "unavailable"
        raise _load_error("vit_b16_in21k", weights or f"timm '{name}'", exc) from None


def load_clip(pretrained: bool, weights: str | None, arch: Mapping[str, Any], image_size: int | None = None) -> Any:
    """The whole OpenCLIP model (image and text towers): ViT-B/32 LAION-2B, or ``arch`` (a CLIP config dict
    with ``embed_dim``, ``vision_cfg``, ``text_cfg``) with random weights."""
    open_clip = require("open_clip", "eval")
    if arch:
        cfg = {key: dict(value) if isinstance(value, Mapping) else value for key, value in arch.items()}
        if image_size is not None:
            cfg["vision_cfg"]["image_size"] = image_size
        return open_clip.model.CLIP(**cfg)
    if not pretrained:
        return open_clip.model.CLIP(**open_clip.get_model_config(CLIP_ARCH))
    source = weights or CLIP_PRETRAINED
    try:
        return open_clip.create_model(CLIP_ARCH, pretrained=source, require_pretrained=True)
    except Exception as exc:  # noqa: BLE001
        raise _load_error("clip_vit_b32", f"open_clip {CLIP_ARCH} '{source}'", exc) from None


class ClipClassifier(nn.Module):
    """CLIP's image tower followed by a linear head on its (projected) image embedding."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def _build_clip_classifier(
    num_classes: int, image_size: int, pretrained: bool, weights: str | None, arch: Mapping[str, Any]
) -> nn.Module:
    clip = load_clip(pretrained, weights, arch, image_size if arch else None)
    return ClipClassifier(clip.visual, int(clip.visual.output_dim), num_classes)


def _build_zero_shot(
    num_classes: int, image_size: int, pretrained: bool, weights: str | None, arch: Mapping[str, Any]
) -> nn.Module:
    del num_classes
    return load_clip(pretrained, weights, arch, image_size if arch else None)


def _register_all() -> None:
    scratch: dict[str, Any] = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "native_small": True, "pretrained": False}
    clip: dict[str, Any] = {
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "image_size": 224,
        "native_small": False,
        "pretrained": True,
    }
    BACKBONES.add(
        "resnet50",
        BackboneSpec(
            "resnet50",
            "ResNet-50 from scratch (paper)",
            _torchvision_resnet(50),
            SCRATCH_SGD,
            image_size=224,
            moex_layer="bn1",
            moex_channel_dim=1,
            head="fc",
            **scratch,
        ),
    )
    BACKBONES.add(
        "resnet18",
        BackboneSpec(
            "resnet18",
            "ResNet-18 from scratch (004)",
            _torchvision_resnet(18),
            replace(SCRATCH_SGD, epochs=200),
            image_size=224,
            moex_layer="bn1",
            moex_channel_dim=1,
            head="fc",
            **scratch,
        ),
    )
    BACKBONES.add(
        "wrn28_10",
        BackboneSpec(
            "wrn28_10",
            "WideResNet-28-10 from scratch (paper, appendix I)",
            _build_wrn,
            replace(SCRATCH_SGD, batch_size=64),
            image_size=224,  # the paper: 32×32 crops on CIFAR, 224×224 on the other datasets, as ResNet-50
            moex_layer="conv1",
            moex_channel_dim=1,
            head="fc",
            **scratch,
        ),
    )
    BACKBONES.add(
        "vit_b16_in21k",
        BackboneSpec(
            "vit_b16_in21k",
            "ViT-B/16 pre-trained on ImageNet-21k, fine-tuned (paper)",
            _build_vit,
            FINETUNE_ADAMW,
            mean=HALF,
            std=HALF,
            image_size=224,
            native_small=False,
            moex_layer="patch_embed",
            moex_channel_dim=-1,
            head="head",
            pretrained=True,
        ),
    )
    BACKBONES.add(
        "clip_vit_b32",
        BackboneSpec(
            "clip_vit_b32",
            "OpenCLIP ViT-B/32 LAION-2B image tower + linear head (paper)",
            _build_clip_classifier,
            FINETUNE_ADAMW,
            moex_layer="visual.conv1",
            moex_channel_dim=1,
            head="head",
            **clip,
        ),
    )
    BACKBONES.add(
        "zero_shot_clip",
        BackboneSpec(
            "zero_shot_clip",
            "OpenCLIP ViT-B/32 LAION-2B zero-shot by text prompts, untrained (004's reference)",
            _build_zero_shot,
            None,
            moex_layer="",
            moex_channel_dim=1,
            head="",
            **clip,
        ),
    )
    BACKBONES.add(
        "small_cnn",
        BackboneSpec(
            "small_cnn",
            "four-conv network from scratch that trains on a CPU in seconds",
            _build_small_cnn,
            replace(SCRATCH_SGD, epochs=60, batch_size=32),
            image_size=32,
            moex_layer="stem",
            moex_channel_dim=1,
            head="head",
            **scratch,
        ),
    )


_register_all()
