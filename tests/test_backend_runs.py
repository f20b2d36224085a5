"""``sgid augment`` end to end with the other backends on tiny models: the usual guarantees (batch-size invariance,
manifest fields) hold for each of them. Their runs at batch size 2 with far-apart guidance are replayed image by
image (tests/test_replay.py) and killed and resumed (tests/test_restart.py) with the methods' (tests/method_runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from sgid.pipeline import augment

#: variant -> the augment options that select it (keyword form; the CLI flags are the same with dashes)
VARIANTS: dict[str, dict[str, object]] = {
    "sdxl": {"backend": "sdxl"},
    "canny": {"control": "canny", "control_scale": 0.9},
    "sdxl-depth": {"backend": "sdxl", "control": "depth"},
}
SLOW = {"sdxl-depth"}  # the default suite runs one ControlNet variant end to end
#: what the manifest records of each variant's ControlNet guidance
CONTROL = {
    "canny": {
        "control": {"kind": "canny", "low_threshold": 100, "high_threshold": 200},
        "control_scale": 0.9,
        "controlnet_model": "tiny:controlnet",
    },
    "sdxl-depth": {
        "control": {"kind": "depth", "model": "tiny:depth"},
        "control_scale": 0.8,
        "controlnet_model": "tiny:controlnet_sdxl",
    },
}
SETTINGS: dict[str, object] = {"models": "tiny", "steps": 8, "multiplier": 2, "quiet": True}


def rows(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("backend-runs") / "in", {"a": 3, "b": 2}, size=(40, 24))


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v in SLOW else v for v in VARIANTS])
def test_batch_size_invariance_and_manifest(variant: str, source: Path, tmp_path: Path, cache_dir: Path) -> None:
    options = {**SETTINGS, **VARIANTS[variant], "cache_dir": cache_dir}
    for name, batch in [("bs1", 1), ("bs3", 3)]:
        augment(source, tmp_path / name, batch_size=batch, **options)
    one, three = tmp_path / "bs1", tmp_path / "bs3"
    assert (one / "metadata.jsonl").read_bytes() == (three / "metadata.jsonl").read_bytes()
    assert pngs(one).keys() == pngs(three).keys() and len(pngs(one)) == 10
    for name in pngs(one):  # pixels equal within the last bits of batched CPU arithmetic
        a, b = (np.asarray(Image.open(run / name), int) for run in (one, three))
        assert np.abs(a - b).max() <= 2
    family = str(VARIANTS[variant].get("backend", "sd"))
    for row in rows(one):
        assert row["backend"] == family and row["generator_model"] == f"tiny:{family}"
        assert (row["width"], row["height"]) == (40, 24) and row["generation_height"] == 32  # tiny: 32 px native
        assert {key: row.get(key) for key in CONTROL.get(variant, {})} == CONTROL.get(variant, {})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--control", "sketch"], "unknown control 'sketch'; choose from: canny, depth"),
        (["--controlnet", "x/y"], "--controlnet needs --control KIND"),
        (["--control-scale", "0.5"], "--control-scale needs --control KIND"),
        (["--control", "depth", "--canny-low", "50"], "--canny-low and --canny-high apply to --control canny only"),
        (["--control", "canny", "--control-model", "m"], "--control-model: --control canny uses no model"),
        (["--control", "canny", "--control-scale", "-1"], "invalid --control-scale -1.0: must be >= 0"),
        (["--control", "canny", "--canny-low", "250"], "invalid --canny-low 250 / --canny-high 200"),
        (["--control", "canny", "--method", "text2img"], "--control guides image-to-image generation"),
        (["--control", "canny", "--controlnet", "model.ckpt"], "only .safetensors checkpoints are loaded"),
        (["--control", "canny", "--backend", "sdxl", "--controlnet", "tiny:controlnet"], "does not fit"),
    ],
)
def test_bad_control_options_get_one_line_and_exit_2(
    flags: list[str], message: str, source: Path, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sgid.cli import main

    argv = ["augment", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", "--cache-dir", str(cache_dir)]
    code = main([*argv, "--steps", "2", "--guidance", "2", "-q", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 2  # the error (and the tiny-models note)
