"""`sgid augment --method randaugment | random_erasing | cutmix`: the evaluation's perturbations as images.

The materialised images are the very output of the implementations `sgid evaluate` trains with (same seed, same
bytes), every random choice is recorded, no model is loaded, and runs resume like every method.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder, noise_image
from sgid.evaluate.perturb import cutmix, randaugment, random_erasing
from sgid.images import resize
from sgid.pipeline import augment
from sgid.seeding import global_rngs
from sgid.stages.perturb import IMAGE_PERTURBATIONS, IMAGENET_MEAN, IMAGENET_STD

NAMES = IMAGE_PERTURBATIONS.names()


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "in", {"cat": 3, "dog": 2}, size=(40, 30))


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load a model fails the test."""
    import sgid.stages.bundle as bundle

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a perturbation method loaded a model")

    for name in ("load_sd_pipeline", "load_captioner", "load_scorer", "load_text_model"):
        monkeypatch.setattr(bundle, name, refuse)


# -- the same implementation as sgid evaluate ----------------------------------------------------------------
SEEDS = range(12)


def test_randaugment_equals_the_evaluation_transform() -> None:
    image, perturbation = noise_image(1, (56, 40)), IMAGE_PERTURBATIONS.get("randaugment")()
    seen = set()
    for seed in SEEDS:
        params = perturbation.sample(image.size, seed)
        with global_rngs(seed):
            expected = randaugment()(image)
        assert np.array_equal(np.asarray(perturbation.apply(image, params)), np.asarray(expected))
        assert len(params["ops"]) == 2
        seen.update(op["op"] for op in params["ops"])
    assert len(seen) >= 4  # the seeds really choose different operations


def test_random_erasing_equals_the_evaluations_eraser_on_the_normalised_tensor() -> None:
    image, perturbation = noise_image(2, (56, 40)), IMAGE_PERTURBATIONS.get("random_erasing")()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    areas = []
    for seed in SEEDS:
        params = perturbation.sample(image.size, seed)
        tensor = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - mean) / std
        with global_rngs(seed):
            random_erasing(probability=1.0)(tensor)
        expected = ((tensor * std + mean) * 255).round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(perturbation.apply(image, params)), expected)
        x1, y1, x2, y2 = params["box"]
        areas.append((x2 - x1) * (y2 - y1) / (56 * 40))
    assert all(0.02 - 0.01 <= a <= 0.4 + 0.02 for a in areas) and len(set(areas)) > 3  # the paper's s in [0.02, 0.4]


def test_cutmix_equals_torchvision_on_the_pair() -> None:
    image, partner = noise_image(3, (56, 40)), noise_image(4, (30, 30))
    perturbation = IMAGE_PERTURBATIONS.get("cutmix")()
    for seed in SEEDS:
        params = perturbation.sample(image.size, seed)
        batch = torch.stack(
            [torch.from_numpy(np.array(resize(partner, image.size))), torch.from_numpy(np.array(image))]
        ).permute(0, 3, 1, 2)
        with global_rngs(seed):
            mixed, targets = cutmix()(batch, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        assert np.array_equal(np.asarray(perturbation.apply(image, params, partner)), mixed[1].permute(1, 2, 0).numpy())
        assert params["lam"] == pytest.approx(float(targets[1, 0]))  # the image's own label weight


def test_sampling_is_per_seed_and_leaves_global_generators_alone() -> None:
    import random

    random.seed(5)
    torch.manual_seed(5)
    before = (random.getstate(), torch.get_rng_state())
    for name in NAMES:
        perturbation = IMAGE_PERTURBATIONS.get(name)()
        assert perturbation.sample((64, 48), 1) == perturbation.sample((64, 48), 1)
        assert perturbation.sample((64, 48), 1) != perturbation.sample((64, 48), 2)
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])


# -- as methods of sgid augment -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", NAMES)
def test_method_end_to_end(method: str, folder: Path, tmp_path: Path, cache_dir: Path, no_models: None) -> None:
    out = tmp_path / "out"
    summary = augment(folder, out, method=method, multiplier=2, quiet=True, cache_dir=cache_dir)
    manifest = rows(out)
    assert summary.generated == len(manifest) == 10
    for row in manifest:
        assert row["method"] == method and row["perturbation"] == method and row["perturbation_applied"] is True
        assert row["steps"] is None and row["denoising_steps"] is None and row["guidance_scale"] is None
        assert row["generator_model"] == IMAGE_PERTURBATIONS.get(method).implementation
        assert row["perturbation_settings"]["citation"]
        source = pixels(folder / row["source"])
        made = pixels(out / row["file_name"])
        assert made.shape == source.shape  # the source's own size
        if method == "randaugment":
            assert len(row["perturbation_params"]["ops"]) == 2
        else:
            x1, y1, x2, y2 = row["perturbation_params"]["box"]
            outside = np.ones(source.shape[:2], bool)
            outside[y1:y2, x1:x2] = False
            assert np.array_equal(made[outside], source[outside])  # only the box changed
            inside = made[y1:y2, x1:x2]
            if method == "random_erasing":
                assert (inside == np.array(row["perturbation_params"]["fill"], np.uint8)).all()
            else:
                partner = resize(Image.open(folder / row["partner"]).convert("RGB"), (40, 30))
                assert np.array_equal(inside, np.asarray(partner)[y1:y2, x1:x2])
                assert row["partner"] != row["source"] and row["partner_label"] == row["partner"].split("/")[0]
                assert row["perturbation_params"]["lam"] == pytest.approx(1 - (x2 - x1) * (y2 - y1) / (40 * 30))
                assert "partner_file" not in row  # no absolute paths in the manifest
    assert len({json.dumps(r["perturbation_params"]) for r in manifest}) > 5  # per-item choices


@pytest.mark.parametrize("method", NAMES)
def test_same_bytes_for_any_batch_size_and_resume(method: str, folder: Path, tmp_path: Path, cache_dir: Path) -> None:
    one = tmp_path / "bs1"
    augment(folder, one, method=method, multiplier=2, batch_size=1, quiet=True, cache_dir=cache_dir)
    three = tmp_path / "bs3"
    augment(folder, three, method=method, multiplier=2, batch_size=3, quiet=True, cache_dir=cache_dir)
    assert pngs(one) == pngs(three)
    assert (one / "metadata.jsonl").read_bytes() == (three / "metadata.jsonl").read_bytes()
    # an image lost (a killed run's missing item) is made again, to the same bytes; nothing else is redone
    lost = sorted(pngs(three))[3]
    (three / lost).unlink()
    again = augment(folder, three, method=method, multiplier=2, batch_size=3, quiet=True, cache_dir=cache_dir)
    assert again.generated == 1 and pngs(three) == pngs(one)


def test_perturb_probability(folder: Path, tmp_path: Path, cache_dir: Path) -> None:
    never = tmp_path / "never"
    augment(folder, never, method="random_erasing", perturb_probability=0.0, quiet=True, cache_dir=cache_dir)
    for row in rows(never):
        assert row["perturbation_applied"] is False and row["perturbation_params"] is None
        assert np.array_equal(pixels(never / row["file_name"]), pixels(folder / row["source"]))
    half = tmp_path / "half"
    augment(folder, half, method="cutmix", perturb_probability=0.5, multiplier=4, quiet=True, cache_dir=cache_dir)
    applied = [r["perturbation_applied"] for r in rows(half)]
    assert 0 < sum(applied) < len(applied) and all(r["perturbation_probability"] == 0.5 for r in rows(half))


def test_bad_probability_and_single_image_cutmix(tmp_path: Path, cache_dir: Path) -> None:
    from sgid.cli import main

    single = make_image_folder(tmp_path / "one", {"cat": 1})
    code = main(
        ["augment", str(single), "--out", str(tmp_path / "x"), "--method", "cutmix", "--perturb-probability", "2"]
    )
    assert code == 2
    summary = augment(single, tmp_path / "cm", method="cutmix", quiet=True, cache_dir=cache_dir)
    assert summary.generated == 0 and summary.failed == 1
    (error,) = [json.loads(line) for line in (tmp_path / "cm" / "errors.jsonl").read_text().splitlines()]
    assert "second readable image" in error["reason"]


def test_output_reaches_evaluate(folder: Path, tmp_path: Path, cache_dir: Path) -> None:
    from sgid.evaluate.data import linked_generated, read_generated, read_image_folder

    out = tmp_path / "ra"
    augment(folder, out, method="randaugment", quiet=True, cache_dir=cache_dir)
    classes, real = read_image_folder(folder)
    generated = read_generated(out, classes)
    assert len(generated) == 5 and linked_generated(generated, real) == generated


@pytest.mark.slow
def test_metrics_measure_a_perturbation_run(folder: Path, tmp_path: Path, cache_dir: Path) -> None:
    from sgid.cli import main

    out = tmp_path / "re"
    augment(folder, out, method="random_erasing", models="tiny", quiet=True, cache_dir=cache_dir)
    code = main(["metrics", str(out), "--out", str(tmp_path / "m"), "--cache-dir", str(cache_dir), "-q", "--no-plots"])
    assert code == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["overall"]["generated"] == 5 and metrics["overall"]["similarity"]["n"] == 5
