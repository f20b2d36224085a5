"""Bad input gets one line on stderr and exit code 2, before any model loads; never a traceback."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from sgid.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a model was loaded before the options were checked")

    for name in ("load_captioner", "load_scorer", "load_sd_pipeline"):
        monkeypatch.setattr(f"sgid.stages.bundle.{name}", refuse)
    monkeypatch.setattr("sgid.pipeline.resolve_models", refuse)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--noise", "1.5"], "invalid --noise 1.5: must be in [0, 1]"),
        (["--noise", "-0.2"], "invalid --noise"),
        (["--steps", "0"], "invalid --steps 0: must be >= 1"),
        (["--preset", "imagenet"], "unknown preset 'imagenet'; choose from: cifar100, cifar10"),
        (["--method", "dalle"], "unknown method 'dalle'; choose from: boomerang, sgid, diverse_caption"),
        (["--models", "huge"], "unknown models preset 'huge'"),
        (["--caption", "longest"], "invalid --caption 'longest'"),
        (["--guidance", "lots"], "invalid --guidance 'lots'"),
        (["--num-beams", "3"], "beam search cannot return 10 captions with num_beams=3"),
        (["--top-p", "2"], "invalid --top-p 2.0: must be in (0, 1]"),  # named by its flag, not its field
        (["--top-k", "-1"], "invalid --top-k -1: must be >= 0"),
        (["--min-length", "30"], "invalid --min-length 30 / --max-length 20"),
        (["--beam-captions", "0", "--nucleus-captions", "0"], "at least one caption is needed"),
        (["--noise", "abc"], "argument --noise: invalid float value: 'abc'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_invalid_options_exit_2_with_one_line(
    tmp_path: Path, image_folder: Path, flags: list[str], message: str, capsys, no_model_loading
) -> None:  # type: ignore[no-untyped-def]
    code, err = run_cli(["augment", str(image_folder), "--out", str(tmp_path / "out"), *flags], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sgid: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_missing_input_and_missing_out(tmp_path: Path, capsys, no_model_loading) -> None:  # type: ignore[no-untyped-def]
    code, err = run_cli(["augment", str(tmp_path / "nope"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "input folder not found" in err and err.count("\n") == 1
    code, err = run_cli(["augment", str(tmp_path)], capsys)
    assert code == 2 and "--out" in err


def test_unavailable_weights_fail_before_any_work(tmp_path: Path, image_folder: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    code, err = run_cli(
        [
            "augment",
            str(image_folder),
            "--out",
            str(out),
            "--models",
            "tiny",
            "--captioner",
            str(tmp_path / "no-such-blip"),
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert "cannot load the captioner" in err and "no-such-blip" in err
    assert not out.exists()


def test_hub_id_offline_names_the_model_and_the_fix(tmp_path: Path, image_folder: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = run_cli(["augment", str(image_folder), "--out", str(tmp_path / "out")], capsys)
    # every missing model at once, one short line each, with the flag that points at a local copy
    lines = err.splitlines()
    assert not [w for w in caught if "local_dir_use_symlinks" in str(w.message)]  # no upstream deprecation noise
    assert code == 2 and lines[0] == "sgid: error: 3 models cannot be loaded:" and len(lines) == 4
    for line, flag, name in zip(
        lines[1:],
        ("--captioner", "--scorer", "--sd-model"),
        ("Salesforce/blip-image-captioning-base", "openai/clip-vit-base-patch32", "stable-diffusion-v1-5"),
        strict=True,
    ):
        assert line.startswith("  - cannot load the ") and f"'{name}" in line and f"pass {flag} DIR" in line
        assert "not on this machine and the hub is unreachable" in line and len(line) < 240
    assert not (tmp_path / "out").exists()


def test_console_script_entry_point_and_help() -> None:
    result = subprocess.run([sys.executable, "-m", "sgid", "augment", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in (
        "--models",
        "--method",
        "--preset",
        "--caption",
        "--prompt",
        "--label-weight",
        "--caption-weight",
        "--noise",
        "--steps",
        "--multiplier",
        "--seed",
        "--batch-size",
        "--device",
        "--overwrite",
        "--quiet",
    ):
        assert flag in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "sgid", "augment", "x", "--out", "y", "--steps", "-1"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1
