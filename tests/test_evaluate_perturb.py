"""Method names and the perturbation baselines at the paper's settings (appendix I), applied after generation."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms import v2

from evaluate_helpers import solid
from sgid.errors import SgidError
from sgid.evaluate.backbones import BACKBONES
from sgid.evaluate.data import ArrayImage, Example
from sgid.evaluate.methods import parse_method, parse_methods, variants
from sgid.evaluate.mixing import Plan, Slot
from sgid.evaluate.perturb import (
    PERTURBATIONS,
    BatchAugment,
    moex,
    moex_at,
    randaugment,
    random_erasing,
    soft_cross_entropy,
)
from sgid.evaluate.train import TrainSettings, fit

NAMES = PERTURBATIONS.names()

# -- method names --------------------------------------------------------------------------------------------


def test_method_names_are_the_issues() -> None:
    assert NAMES == ["random_erasing", "cutmix", "randaugment", "moex"]
    method = parse_method("generated+randaugment", NAMES)
    assert method.generated and method.perturbations == ("randaugment",)
    assert parse_method("baseline", NAMES).perturbations == ()
    assert parse_method("randaugment+random_erasing", NAMES).perturbations == ("randaugment", "random_erasing")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("mixup", "unknown method component 'mixup'.*choose from: baseline, generated, random_erasing"),
        ("baseline+cutmix", "cannot be combined"),
        ("cutmix+cutmix", "twice"),
    ],
)
def test_bad_method_names_fail_listing_the_valid_ones(bad: str, message: str) -> None:
    with pytest.raises(SgidError, match=message):
        parse_method(bad, NAMES)


def test_baseline_is_always_run_first() -> None:
    assert [m.name for m in parse_methods("cutmix,generated", NAMES)] == ["baseline", "cutmix", "generated"]
    assert [m.name for m in parse_methods("cutmix,baseline", NAMES)] == ["baseline", "cutmix"]


def test_a_proportion_sweep_makes_one_variant_per_value_for_generated_methods() -> None:
    rows = variants(parse_methods("baseline,generated+randaugment", NAMES), "replace", (0.0, 0.5))
    assert [v.slug for v in rows] == [
        "baseline",
        "generated+randaugment@replace-p0",
        "generated+randaugment@replace-p0.5",
    ]
    assert rows[2].label == "generated+randaugment [replace p=0.5]"


# -- the paper's hyperparameters -----------------------------------------------------------------------------


def test_random_erasing_has_the_official_codes_settings() -> None:
    eraser = random_erasing()
    assert (eraser.probability, eraser.sl, eraser.sh, eraser.r1, eraser.attempts) == (0.5, 0.02, 0.4, 0.3, 100)
    assert eraser.fill == (0.4914, 0.4822, 0.4465)  # written into the normalised tensor, as the official code does


def official_erase(image: torch.Tensor, seed: int) -> torch.Tensor:
    """The official algorithm (zhunzhong07/Random-Erasing, transforms.RandomErasing) replayed by hand."""
    import random

    rng = random.Random(seed)
    if rng.uniform(0, 1) > 0.5:
        return image
    for _ in range(100):
        area = image.shape[1] * image.shape[2]
        target_area = rng.uniform(0.02, 0.4) * area
        aspect_ratio = rng.uniform(0.3, 1 / 0.3)
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < image.shape[2] and h < image.shape[1]:
            x1, y1 = rng.randint(0, image.shape[1] - h), rng.randint(0, image.shape[2] - w)
            out = image.clone()
            for c, mean in enumerate((0.4914, 0.4822, 0.4465)):
                out[c, x1 : x1 + h, y1 : y1 + w] = mean
            return out
    return image


def test_random_erasing_equals_the_official_algorithm_draw_for_draw() -> None:
    import random

    eraser = random_erasing()
    image = torch.randn(3, 32, 24)
    erased = 0
    for seed in range(60):
        random.seed(seed)
        ours = eraser(image.clone())
        assert torch.equal(ours, official_erase(image, seed)), seed
        erased += not torch.equal(ours, image)
    assert 15 < erased < 45  # p = 0.5


def test_random_erasing_erases_half_the_images_with_one_rectangle_of_the_allowed_size() -> None:
    import random

    random.seed(0)
    eraser = random_erasing()
    erased_fractions = []
    for _ in range(400):
        image = torch.zeros(3, 32, 32)
        out = eraser(image)
        assert torch.equal(out[1] != 0, out[0] != 0)  # one rectangle, every channel
        erased_fractions.append(float((out[0] == 0.4914).float().mean()))
    erased = [f for f in erased_fractions if f > 0]
    assert abs(len(erased) / 400 - 0.5) < 0.08
    assert min(erased) >= 0.015 and max(erased) <= 0.42


def test_randaugment_is_torchvision_with_n2_m9() -> None:
    op = randaugment()
    assert isinstance(op, v2.RandAugment) and op.num_ops == 2 and op.magnitude == 9


def test_cutmix_and_moex_settings() -> None:
    assert PERTURBATIONS.get("cutmix").params == {"alpha": 1.0, "probability": 0.5}
    assert PERTURBATIONS.get("moex").params == {"lam": 0.5, "probability": 0.25, "norm": "pono", "epsilon": 1e-5}
    augment = BatchAugment(["cutmix"], 4)
    assert isinstance(augment._cutmix, v2.CutMix) and augment._cutmix.alpha == 1.0


def test_cutmix_applies_to_half_the_batches_with_area_weighted_targets() -> None:
    torch.manual_seed(0)
    augment = BatchAugment(["cutmix"], 3)
    labels = torch.tensor([0, 1, 2, 0])
    mixed = 0
    for _ in range(400):
        images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()
        out, targets, _ = augment(images, labels)
        assert torch.allclose(targets.sum(dim=1), torch.ones(4))
        if not torch.equal(out, images):
            mixed += 1
            # Image 1 (label 1) receives a box from image 0 (label 0): its target weights are the area shares.
            pasted = float((out[1] == 0.0).float().mean())
            assert float(targets[1, 1]) == pytest.approx(1 - pasted, abs=1e-6)
            assert float(targets[1, 0]) == pytest.approx(pasted, abs=1e-6)
    assert abs(mixed / 400 - 0.5) < 0.08


def test_soft_targets_give_the_papers_mixed_loss() -> None:
    logits = torch.randn(5, 4)
    ya, yb, lam = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 0, 2, 3]), 0.3
    targets = lam * nn.functional.one_hot(ya, 4).float() + (1 - lam) * nn.functional.one_hot(yb, 4).float()
    expected = lam * nn.functional.cross_entropy(logits, ya) + (1 - lam) * nn.functional.cross_entropy(logits, yb)
    assert soft_cross_entropy(logits, targets) == pytest.approx(float(expected), rel=1e-5)


def test_moex_exchanges_pono_moments_between_images() -> None:
    x = torch.randn(4, 8, 5, 5)
    swap = torch.tensor([2, 3, 0, 1])
    out = moex(x, swap, channel_dim=1, epsilon=0.0)
    assert torch.allclose(out.mean(dim=1), x.mean(dim=1)[swap], atol=1e-5)
    assert torch.allclose(out.std(dim=1), x.std(dim=1)[swap], atol=1e-4)
    tokens = torch.randn(4, 6, 8)  # (B, N, C): a ViT's patch embedding
    assert torch.allclose(moex(tokens, swap, -1, 0.0).mean(dim=-1), tokens.mean(dim=-1)[swap], atol=1e-5)


def test_moex_applies_to_a_quarter_of_the_batches_on_the_early_feature_map_with_lambda_05() -> None:
    torch.manual_seed(0)
    model = BACKBONES.get("small_cnn").build(3, 8, False, None, {"width": 4})
    augment = BatchAugment(["moex"], 3, model.get_submodule(BACKBONES.get("small_cnn").moex_layer), 1)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    plain = model.eval()(images)
    exchanged = 0
    for _ in range(400):
        _, targets, context = augment(images, labels)
        with context:
            out = model(images)
        if not torch.allclose(out, plain):
            exchanged += 1
            assert set(targets.max(dim=1).values.tolist()) <= {0.5, 1.0}
        else:
            assert torch.equal(targets, nn.functional.one_hot(labels, 3).float())
    assert abs(exchanged / 400 - 0.25) < 0.07
    assert torch.allclose(model(images), plain)  # the hook is gone after the batch


def test_moex_hook_is_removed_even_when_the_forward_fails() -> None:
    layer = nn.Identity()
    with pytest.raises(RuntimeError, match="the forward failed"), moex_at(layer, torch.tensor([0]), 1, 1e-5):
        raise RuntimeError("the forward failed")
    assert not layer._forward_hooks


# -- combinations apply the perturbation after generation ----------------------------------------------------


class _Recorder:
    """Wraps an image operation and records the dominant colour channel of every image it sees."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.seen: list[int] = []

    def __call__(self, image):  # type: ignore[no-untyped-def]
        self.seen.append(int(np.asarray(image).reshape(-1, 3).sum(axis=0).argmax()))
        return self.inner(image)


def test_generated_plus_randaugment_runs_randaugment_on_the_generated_images(monkeypatch) -> None:
    import sgid.evaluate.perturb as perturb

    recorder = _Recorder(randaugment())
    monkeypatch.setitem(perturb._IMAGE_OPS, "randaugment", lambda: recorder)
    red, blue = solid((250, 0, 0)), solid((0, 0, 250))
    real = [Example(key=f"c{i % 2}/{i}.png", label=i % 2, load=ArrayImage(blue)) for i in range(4)]
    generated = [
        Example(key=f"g:{ex.key}", label=ex.label, load=ArrayImage(red), source=ex.key, generated=True) for ex in real
    ]
    plan = Plan(tuple(Slot(ex) for ex in (*real, *generated)))
    spec = BACKBONES.get("small_cnn")
    settings = TrainSettings("small_cnn", 32, True, replace(spec.recipe, epochs=2, batch_size=4), quiet=True)
    result = fit(plan, 2, ("randaugment",), settings, seed=0)
    assert recorder.seen.count(0) == 2 * len(generated)  # every generated image, every epoch, went through RA
    assert recorder.seen.count(2) == 2 * len(real)
    assert result.generated_draws == 2 * len(generated)
