"""Bad input gets one line on stderr and exit code 2, before any model loads; never a traceback."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from sgid.cli import main
from sgid.commands import command_modules


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


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
        (["--guidance-floor", "lots"], "invalid --guidance-floor 'lots'"),
        (["--method", "diverse_caption", "--summarize"], "--summarize needs --text-model"),
        (["--weighting", "loud"], "unknown --weighting mode 'loud'; choose from: literal, mean-restore, compel"),
        (["--num-beams", "3"], "beam search cannot return 10 captions with num_beams=3"),
        (["--top-p", "2"], "invalid --top-p 2.0: must be in (0, 1]"),  # named by its flag, not its field
        (["--top-k", "-1"], "invalid --top-k -1: must be >= 0"),
        (["--min-length", "30"], "invalid --min-length 30 / --max-length 20"),
        (["--beam-captions", "0", "--nucleus-captions", "0"], "at least one caption is needed"),
        (["--noise", "abc"], "argument --noise: invalid float value: 'abc'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        # not numbers: NaN passes no range, infinity none that a manifest can record
        (["--guidance", "nan"], "invalid --guidance 'nan': use 'paper' or a finite number"),
        (["--guidance", "inf"], "invalid --guidance 'inf'"),
        (["--label-weight", "inf"], "invalid --label-weight inf: must be a finite number"),
        (["--caption-weight", "nan"], "invalid --caption-weight nan"),
        (["--repetition-penalty", "0"], "invalid --repetition-penalty 0.0: must be > 0"),
        (["--repetition-penalty", "nan"], "invalid --repetition-penalty nan: must be a finite number"),
        (["--multiplier", "99999999999999999999"], "invalid --multiplier 99999999999999999999: must be in [1, 10000]"),
        pytest.param(
            ["--device", "mps"],
            "--device mps asked for, but this torch has no MPS (Apple GPU) device",
            marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an MPS device"),
        ),
    ],
)
def test_invalid_options_exit_2_with_one_line(
    tmp_path: Path, image_folder: Path, flags: list[str], message: str, capsys, forbid_model_loading
) -> None:  # type: ignore[no-untyped-def]
    code, err = run_cli(["augment", str(image_folder), "--out", str(tmp_path / "out"), *flags], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sgid: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_missing_input_and_missing_out(tmp_path: Path, capsys, forbid_model_loading) -> None:  # type: ignore[no-untyped-def]
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


def test_weights_cut_short_are_one_line_naming_the_model(tmp_path: Path, image_folder: Path, tiny, capsys) -> None:  # type: ignore[no-untyped-def]
    """A download or copy cut short: safetensors' own error was a traceback."""
    import shutil

    blip = shutil.copytree(tiny.captioner.path, tmp_path / "blip")
    for weights in blip.rglob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    code, err = run_cli(
        ["augment", str(image_folder), "--out", str(out), "--models", "tiny", "--captioner", str(blip)], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert f"cannot load the captioner '{blip}': Error while deserializing header" in err
    assert f"check that {blip} holds a complete checkpoint" in err and not out.exists()


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


#: Per command, options that must be refused (exit 2, one line) before any model is built or loaded and before
#: anything is written. {input}: an image folder; {run}: an augment run; {out}: the output folder.
INVALID_OPTIONS: dict[str, list[tuple[list[str], str]]] = {
    "augment": [
        (["{input}", "--out", "{out}", "--models", "tiny", "--noise", "1.5"], "invalid --noise 1.5"),
        (["{input}", "--out", "{out}", "--models", "tiny", "--device", "tpu"], "invalid --device 'tpu'"),
        (["{input}", "--out", "{out}", "--models", "tiny", "--dtype", "fp8"], "invalid --dtype 'fp8'"),
        (
            ["{input}", "--out", "{out}", "--models", "tiny", "--method", "text2img", "--text-model", "tiny:gpt"],
            "tiny:gpt",
        ),
        (["{input}", "--out", "{out}", "--models", "tiny", "--method", "retrieval"], "needs --pool"),
        (["{input}", "--out", "{input}/cat/out", "--models", "tiny"], "inside the input folder"),
        (["{input}", "--out", "{out}", "--models", "tiny", "--cache-dir", "{empty}"], "is a file, not a folder"),
    ],
    "demo": [
        (["--out", "{out}", "--noise", "2"], "invalid --noise 2.0"),
        (["--out", "{out}", "--multiplier", "0"], "invalid --multiplier 0"),
        (["--out", "{out}", "--models", "huge"], "unknown models preset 'huge'"),
    ],
    "evaluate": [
        (["--train", "{input}", "--test", "{run}", "--out", "{out}", "--seeds", "0"], "--seeds must be at least 1"),
        (["--train", "{input}", "--test", "{run}", "--out", "{out}", "--backbone", "vgg"], "unknown backbone 'vgg'"),
        (["--train", "{input}", "--test", "{run}", "--out", "{out}", "--device", "tpu"], "--device must be"),
    ],
    "filter": [
        (["{run}", "--filters", "label,nope", "--out", "{out}"], "unknown filter 'nope'"),
        (["{run}", "--filters", "threshold", "--threshold", "2", "--out", "{out}"], "not a cosine similarity"),
        (["{run}", "--filters", "label", "--models", "huge", "--out", "{out}"], "unknown models preset 'huge'"),
        (["{run}", "--filters", "label", "--device", "tpu", "--out", "{out}"], "invalid --device 'tpu'"),
    ],
    "learn-concepts": [
        (["{input}", "--out", "{out}", "--models", "tiny", "--steps", "0"], "--steps must be at least 1"),
        (["{input}", "--out", "{out}", "--models", "tiny", "--dtype", "fp8"], "invalid --dtype 'fp8'"),
        (["{input}", "--out", "{out}", "--models", "tiny", "--device", "tpu"], "invalid --device 'tpu'"),
        (["{input}", "--out", "{out}", "--models", "huge"], "unknown models preset 'huge'"),
    ],
    "review": [
        (["{run}", "--port", "70000"], "--port 70000 must be between 0 and 65535"),
        (["{run}", "--token", " "], "--token is empty"),
        (["{run}", "--study", "--labels", "0"], "--labels 0: choose at least 1 label"),
        (["{run}", "--filters", "{out}"], "is not an sgid filter output"),
    ],
    "metrics": [
        (["{run}", "--features", "pixels", "--out", "{out}"], "unknown feature extractor 'pixels'"),
        (["{run}", "--kid-subsets", "0", "--out", "{out}"], "--kid-subsets must be >= 1"),
        (["{run}", "--models", "huge", "--out", "{out}"], "unknown models preset 'huge'"),
        (["{run}", "--device", "tpu", "--out", "{out}"], "invalid --device 'tpu'"),
    ],
}


def test_every_command_has_invalid_option_cases() -> None:
    assert set(INVALID_OPTIONS) == {name.replace("_", "-") for name in command_modules()}


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [(command, argv, message) for command, cases in INVALID_OPTIONS.items() for argv, message in cases],
)
def test_invalid_options_of_every_command_exit_2_before_any_model_loads(
    command: str, argv: list[str], message: str, tmp_path: Path, forbid_model_loading: list[str], capsys
) -> None:  # type: ignore[no-untyped-def]
    from test_filters_support import make_run

    folders = {
        "input": make_image_folder(tmp_path / "input", {"cat": 2, "dog": 2}),
        "run": make_run(tmp_path / "made", {"cat": 2, "dog": 2}, k=1),
        "out": tmp_path / "out",
        "empty": tmp_path / "empty-file",
    }
    folders["empty"].touch()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, err = run_cli([command, *(a.format(**folders) for a in argv)], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("sgid: error: ") and message in err, err
    assert forbid_model_loading == []
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_unusable_cache_dir_and_weights_files_are_one_line_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from test_filters_support import make_run

    run = make_run(tmp_path / "made", {"cat": 2, "dog": 2}, k=1)
    empty = tmp_path / "empty-file"
    empty.touch()
    code, err = run_cli(
        [
            "metrics",
            str(run),
            "--features",
            "inception",
            "--inception-weights",
            str(empty),
            "--out",
            str(tmp_path / "m"),
        ],
        capsys,
    )
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == f"sgid: error: --inception-weights {empty} is not a readable weights file (EOFError)"
    (tmp_path / "blocked").write_text("a file where the cache's folders would go\n")
    code, err = run_cli(
        [
            "filter",
            str(run),
            "--filters",
            "label",
            "--models",
            "tiny",
            "--cache-dir",
            str(tmp_path / "blocked" / "c"),
            "--out",
            str(tmp_path / "f"),
        ],
        capsys,
    )
    assert code == 2 and "Traceback" not in err, err
    assert (
        err.splitlines()[-1].startswith("sgid: error: --cache-dir ") and "the tiny models cannot be kept there" in err
    )


def test_an_out_that_cannot_be_created_is_one_line_before_any_work(
    tmp_path: Path, image_folder: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A file where a folder should be: every command said NotADirectoryError in a traceback (metrics after its
    CLIP work)."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    out = str(afile / "sub")
    for args in (
        ["augment", str(image_folder), "--out", out, "--models", "tiny"],
        ["learn-concepts", str(image_folder), "--out", out, "--models", "tiny"],
        ["evaluate", "--train", str(image_folder), "--test", str(tmp_path / "nowhere"), "--out", out],
        ["demo", "--out", out],
    ):
        code, err = run_cli(args, capsys)
        assert code == 2 and err.count("\n") == 1, (args, err)
        assert "cannot be created" in err or "not found" in err, (args, err)
    code, err = run_cli(["augment", str(image_folder), "--out", out, "--models", "tiny"], capsys)
    assert err == f"sgid: error: --out {out} cannot be created: {afile} is a file, not a folder\n"
    # what a command finds later (a path it writes beside its output) is one line too, never a traceback
    import errno

    def denied(args):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/data/review.sqlite")

    monkeypatch.setattr("sgid.commands.demo.run", denied)
    code, err = run_cli(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert (code, err) == (2, "sgid: error: Permission denied: /srv/data/review.sqlite\n")

    def failing_disk(args):  # type: ignore[no-untyped-def]
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("sgid.commands.demo.run", failing_disk)
    with pytest.raises(OSError, match="Input/output error"):  # not a path problem: not dressed up as one
        main(["demo", "--out", str(tmp_path / "demo")])
    assert afile.read_text() == "mine"
