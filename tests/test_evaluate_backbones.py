"""Backbones by name with the paper's recipes (appendix I), tiny random-weight configs, saved classifiers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluate_helpers import TINY_CLIP, TINY_VIT, pattern
from sgid.errors import ModelLoadError, SgidError
from sgid.evaluate.backbones import BACKBONES, build_backbone, freeze_for_linear_probe
from sgid.evaluate.checkpoint import load_classifier, predict_proba, save_classifier
from sgid.evaluate.train import make_optimizer

TINY_ARCH = {
    "vit_b16_in21k": TINY_VIT,
    "clip_vit_b32": TINY_CLIP,
    "zero_shot_clip": TINY_CLIP,
    "wrn28_10": {"depth": 10, "widen": 1},
    "small_cnn": {"width": 4},
}
TRAINED = [name for name in BACKBONES.names() if BACKBONES.get(name).recipe is not None]


def test_backbone_names_are_the_issues() -> None:
    assert sorted(BACKBONES.names()) == sorted(
        ["resnet50", "resnet18", "wrn28_10", "vit_b16_in21k", "clip_vit_b32", "zero_shot_clip", "small_cnn"]
    )
    with pytest.raises(SgidError, match="unknown backbone 'resnet51'; choose from: resnet50"):
        BACKBONES.get("resnet51")


@pytest.mark.parametrize("name, batch, epochs", [("resnet50", 256, 300), ("resnet18", 256, 200), ("wrn28_10", 64, 300)])
def test_from_scratch_recipe_is_sgd_01_momentum_09_wd_5e4_divided_by_10_at_half_and_three_quarters(
    name: str, batch: int, epochs: int
) -> None:
    recipe = BACKBONES.get(name).recipe
    assert recipe is not None
    assert (recipe.optimizer, recipe.lr, recipe.momentum, recipe.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert (recipe.schedule, recipe.milestones, recipe.gamma) == ("multistep", (0.5, 0.75), 0.1)
    assert (recipe.batch_size, recipe.epochs, recipe.lr_grid) == (batch, epochs, ())
    optimizer, scheduler, per_step = make_optimizer(torch.nn.Linear(2, 2), recipe, recipe.lr, steps_per_epoch=10)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert not per_step and isinstance(optimizer, torch.optim.SGD)
    half, three_quarters = epochs // 2, epochs * 3 // 4  # 150th and 225th of 300
    assert lrs[half - 1] == pytest.approx(0.1) and lrs[half] == pytest.approx(0.01)
    assert lrs[three_quarters - 1] == pytest.approx(0.01) and lrs[three_quarters] == pytest.approx(0.001)


@pytest.mark.parametrize("name", ["vit_b16_in21k", "clip_vit_b32"])
def test_pretrained_recipe_is_adamw_batch_64_lr_grid_15_epochs_and_cifar_5e5_3_epochs(name: str) -> None:
    recipe = BACKBONES.get(name).recipe
    assert recipe is not None
    assert (recipe.optimizer, recipe.batch_size, recipe.epochs) == ("adamw", 64, 15)
    assert recipe.lr_grid == (1e-4, 3e-4, 1e-3, 3e-3)
    assert (recipe.weight_decay, recipe.schedule) == (0.0, "linear")  # the HF Trainer defaults
    for cifar in ("cifar10", "cifar100"):
        fixed = recipe.for_dataset(cifar)
        assert (fixed.lr, fixed.epochs, fixed.lr_grid) == (5e-5, 3, ())
    assert recipe.for_dataset("flowers102") == recipe
    optimizer, scheduler, per_step = make_optimizer(torch.nn.Linear(2, 2), recipe, 3e-4, steps_per_epoch=4)
    for _ in range(30):
        optimizer.step()
        scheduler.step()
    assert per_step and isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * (1 - 30 / 60))


def test_small_cnn_recipe() -> None:
    recipe = BACKBONES.get("small_cnn").recipe
    assert recipe is not None
    assert (recipe.optimizer, recipe.lr, recipe.epochs, recipe.batch_size) == ("sgd", 0.1, 60, 32)


@pytest.mark.parametrize("name", TRAINED)
def test_every_trained_backbone_builds_classifies_and_exposes_its_moex_layer(name: str) -> None:
    spec = BACKBONES.get(name)
    model = build_backbone(name, 3, image_size=32, pretrained=False, arch=TINY_ARCH.get(name)).eval()
    captured = []
    handle = model.get_submodule(spec.moex_layer).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert logits.shape == (2, 3)
    assert captured and captured[0].shape[0] == 2 and captured[0].dim() in (3, 4)
    assert model.get_submodule(spec.head).out_features == 3


def test_small_square_images_train_at_their_own_size_with_a_cifar_stem() -> None:
    resnet = BACKBONES.get("resnet50")
    assert resnet.resolve_image_size((32, 32)) == 32 and resnet.resolve_image_size((500, 375)) == 224
    assert BACKBONES.get("vit_b16_in21k").resolve_image_size((32, 32)) == 224
    assert resnet.resolve_image_size((32, 32), requested=64) == 64
    wrn = BACKBONES.get("wrn28_10")  # like ResNet-50 (appendix I): 32 on CIFAR, 224 on the other datasets
    assert wrn.resolve_image_size((32, 32)) == 32 and wrn.resolve_image_size((500, 375)) == 224
    model = build_backbone("resnet18", 10, image_size=32, pretrained=False)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("name", ["vit_b16_in21k", "clip_vit_b32", "zero_shot_clip"])
def test_unavailable_pretrained_weights_are_a_one_line_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"--weights") as caught:
        build_backbone(name, 3, image_size=224, weights=str(tmp_path / "missing.safetensors"))
    assert "\n" not in str(caught.value) and "missing.safetensors" in str(caught.value)


def test_vit_loads_pretrained_weights_from_a_local_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    donor = build_backbone("vit_b16_in21k", 5, image_size=32, pretrained=False, arch=TINY_VIT)
    path = tmp_path / "vit.safetensors"
    save_file({k: v for k, v in donor.state_dict().items() if not k.startswith("head.")}, str(path))
    model = build_backbone("vit_b16_in21k", 3, image_size=32, weights=str(path), arch=TINY_VIT)
    assert torch.equal(model.patch_embed.proj.weight, donor.patch_embed.proj.weight)
    assert model.head.out_features == 3


def test_linear_probe_trains_only_the_head() -> None:
    spec = BACKBONES.get("clip_vit_b32")
    model = build_backbone("clip_vit_b32", 4, image_size=32, pretrained=False, arch=TINY_CLIP)
    freeze_for_linear_probe(model, spec)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}


# -- saved classifiers (the API the confidence filter uses) --------------------------------------------------


def _images(count: int = 6) -> list[Image.Image]:
    return [Image.fromarray(pattern(i % 3, i, size=40)) for i in range(count)]


@pytest.mark.parametrize("name", ["small_cnn", "vit_b16_in21k", "clip_vit_b32"])
def test_save_load_predict_gives_identical_probabilities(name: str, tmp_path: Path) -> None:
    spec = BACKBONES.get(name)
    torch.manual_seed(0)
    model = build_backbone(name, 3, image_size=32, pretrained=False, arch=TINY_ARCH.get(name)).eval()
    save_classifier(
        model, tmp_path / "clf", backbone=name, classes=["a", "b", "c"], image_size=32, mean=spec.mean, std=spec.std
    )
    assert (tmp_path / "clf" / "classifier.safetensors").is_file()
    loaded, meta = load_classifier(tmp_path / "clf")
    assert meta["classes"] == ["a", "b", "c"] and meta["num_classes"] == 3 and meta["image_size"] == 32
    assert not loaded.training
    # same batch size on both sides: the comparison is about the saved weights, not batched arithmetic
    before, after = (
        predict_proba(model, meta, _images(), batch_size=4),
        predict_proba(loaded, meta, _images(), batch_size=4),
    )
    assert before.shape == (6, 3) and np.allclose(before.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(before, after)


def test_predict_proba_uses_the_evaluation_transform(tmp_path: Path) -> None:
    from sgid.evaluate.transforms import eval_transform

    spec = BACKBONES.get("small_cnn")
    model = build_backbone("small_cnn", 3, image_size=32, pretrained=False, arch={"width": 4}).eval()
    meta = {"image_size": 32, "mean": spec.mean, "std": spec.std, "num_classes": 3}
    image = _images(1)[0]
    with torch.no_grad():
        expected = torch.softmax(model(eval_transform(32, spec.mean, spec.std)(image)[None]), dim=1).numpy()
    np.testing.assert_allclose(predict_proba(model, meta, [image]), expected, rtol=1e-6)
    assert predict_proba(model, meta, []).shape == (0, 3)


def test_loading_a_missing_or_mismatched_classifier_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="classifier.json is missing"):
        load_classifier(tmp_path)
    spec = BACKBONES.get("small_cnn")
    model = build_backbone("small_cnn", 3, image_size=32, pretrained=False)
    save_classifier(
        model, tmp_path, backbone="small_cnn", classes=["a", "b"], image_size=32, mean=spec.mean, std=spec.std
    )  # two classes named, three trained
    with pytest.raises(ModelLoadError, match="does not match backbone 'small_cnn'"):
        load_classifier(tmp_path)


def test_wrn_is_28_layers_deep_and_10_wide_by_default() -> None:
    model = build_backbone("wrn28_10", 10, image_size=32, pretrained=False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 3 * 4 * 2  # stem + 3 groups of n=(28-4)/6=4 blocks of two 3×3 convs
    assert model.fc.in_features == 64 * 10
    assert math.isclose(sum(p.numel() for p in model.parameters()) / 1e6, 36.5, abs_tol=0.2)  # WRN-28-10: 36.5M


@pytest.mark.parametrize(
    "edit, why",
    [
        ({"arch": {"width": "x"}}, "its arch does not describe a small_cnn"),
        ({"mean": "x"}, "mean is not three numbers"),
        ({"image_size": 0}, "image_size 0 is not between 1 and 4096"),
        ({"image_size": 10**9}, "image_size 1000000000 is not between 1 and 4096"),
        ({"std": [0, 0, 0]}, "std has a value that is not above 0"),
        ({"format_version": 2}, "format version 2; this sgid reads 1"),
        ({"classes": ["a", "a", "b"]}, "a class is named twice"),
    ],
)
def test_a_hand_edited_classifier_description_is_a_one_line_error(tmp_path: Path, edit: dict, why: str) -> None:
    """Found by a hostile-input run: each of these was a traceback (or a MemoryError) in sgid filter."""
    spec = BACKBONES.get("small_cnn")
    model = build_backbone("small_cnn", 3, image_size=32, pretrained=False)
    save_classifier(
        model, tmp_path, backbone="small_cnn", classes=["a", "b", "c"], image_size=32, mean=spec.mean, std=spec.std
    )
    load_classifier(tmp_path)  # as written: loads
    meta = json.loads((tmp_path / "classifier.json").read_text())
    (tmp_path / "classifier.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(ModelLoadError, match=re.escape(why)):
        load_classifier(tmp_path)
