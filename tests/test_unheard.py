"""Nothing unheard: options that do not apply warn in one line, user errors are one-line errors before any model
loads (never an ``assert``), and a failed start leaves nothing that blocks the retry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sgid.pipeline as pipeline
from conftest import FAST, make_image_folder
from evaluate_helpers import write_folder, write_generated
from sgid.cli import main
from sgid.config import AugmentConfig
from sgid.errors import SgidError
from sgid.methods import denoising_warning, option_warnings


def _config(tmp_path: Path, **options) -> AugmentConfig:  # type: ignore[no-untyped-def]
    return AugmentConfig.build(tmp_path / "in", tmp_path / "out", **options)


@pytest.mark.parametrize(
    "method, given, flag, users",
    [
        ("sgid", {"pool": "p"}, "--pool", "retrieval"),
        ("text2img", {"instructions": ("x",)}, "--instruction", "instruct_pix2pix"),
        ("text2img", {"beam_captions": 3}, "--beam-captions", "sgid, diverse_caption"),
        ("text2img", {"caption_cache": False}, "--no-cache", "sgid, diverse_caption"),
        ("instruct_pix2pix", {"templates": ("a {label}",)}, "--template", "text2img"),
        ("sgid", {"boomerang_prompt": "label"}, "--boomerang-prompt", "boomerang"),
        ("boomerang", {"summarize": True}, "--summarize", "diverse_caption"),
        ("text2img", {"noise": 0.3}, "--noise", "boomerang, sgid, diverse_caption"),
    ],
)
def test_options_that_do_not_apply_to_the_method_warn(tmp_path, method, given, flag, users) -> None:
    extra = {"guidance": "7.5"} if method in ("text2img", "instruct_pix2pix", "boomerang") else {}
    config = _config(tmp_path, method=method, **extra)
    (line,) = option_warnings(config, given)
    assert line.startswith(f"{flag} does not apply to --method {method} (only to {users})") and "ignored" in line


def test_options_that_apply_somewhere_in_a_chain_do_not_warn(tmp_path) -> None:
    config = _config(tmp_path, method="text2img+sgid")
    assert option_warnings(config, ["templates", "noise", "beam_captions", "seed", "models"]) == []
    assert option_warnings(_config(tmp_path), ["noise", "prompt", "caption", "top_p", "quiet"]) == []


def test_no_denoising_at_all_warns(tmp_path) -> None:
    line = denoising_warning(_config(tmp_path, method="boomerang", steps=4))  # boomerang's noise 0.2: 0.8 steps
    assert line is not None and "int(steps x noise) = 0 steps" in line and "unchanged" in line
    assert denoising_warning(_config(tmp_path, method="boomerang", steps=5)) is None  # one step
    assert denoising_warning(_config(tmp_path, method="text2img", steps=1, guidance="7")) is None  # no noise


def test_the_cli_prints_each_warning_on_one_line_and_runs(tmp_path, cache_dir, capsys) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 1})
    args = ["augment", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", "--quiet"]
    assert main([*args, "--method", "boomerang", "--steps", "4", "--pool", str(source), "--top-p", "0.5"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sgid: warning: ")]
    assert len(warnings) == 3, warnings  # even with --quiet
    assert any("--pool does not apply" in w for w in warnings)
    assert any("--top-p does not apply" in w for w in warnings)
    assert any(w.startswith("sgid: warning: --method boomerang: --steps 4 x --noise 0.2") for w in warnings)
    # ignored means ignored: not recorded, not part of the run's identity, so a rerun without them resumes
    config = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    assert config["pool"] is None and config["captions"]["top_p"] == 0.9
    assert main([*args, "--method", "boomerang", "--steps", "4"]) == 0
    assert "different settings" not in capsys.readouterr().err


def test_a_dry_run_warns_of_steps_times_noise_below_one(tmp_path, cache_dir, capsys) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 1})
    args = ["augment", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", "--quiet", "--dry-run"]
    assert main([*args, "--steps", "1"]) == 0
    assert "sgid: warning: --method sgid: --steps 1 x --noise 0.5 = 0.5 denoising steps" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_concepts_that_match_no_class_warn(tmp_path, capsys, monkeypatch) -> None:
    import sgid.concepts

    source = make_image_folder(tmp_path / "in", {"cat": 1, "dog": 1})
    monkeypatch.setattr(sgid.concepts, "load_concepts", lambda d: {"zebra": "<sgid-zebra>"})

    def stop(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SgidError("stopped before loading models")

    monkeypatch.setattr(pipeline, "resolve_models", stop)
    with pytest.raises(SgidError, match="stopped"):
        pipeline.augment(source, tmp_path / "out", concepts=tmp_path / "concepts", **FAST)
    err = capsys.readouterr().err
    assert "--concepts" in err and "matches no class of the input (it has concepts for zebra)" in err


def test_summarize_without_a_text_model_is_a_one_line_error_not_an_assert(tmp_path, capsys) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 1})
    args = ["augment", str(source), "--out", str(tmp_path / "out"), "--method", "diverse_caption", "--summarize"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == "sgid: error: --summarize needs --text-model (the language model that writes the descriptions)\n"


def test_filter_and_metrics_warn_about_model_flags_they_do_not_use(tmp_path, capsys) -> None:
    train = write_folder(tmp_path / "train", {"cat": 2})
    run = write_generated(tmp_path / "run", train)
    other = write_folder(tmp_path / "other", {"car": 2})
    args = ["metrics", str(run), "--reference", str(other), "--out", str(tmp_path / "m"), "--captioner", "x"]
    assert main([*args, "--sd-model", "y"]) == 2  # the reference is refused after the warnings
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        "sgid: warning: --captioner does not apply to sgid metrics (it uses only CLIP: --models, --scorer); "
        "it is ignored"
    )
    assert lines[1].startswith("sgid: warning: --sd-model does not apply to sgid metrics")
    args = ["filter", str(run), "--filters", "threshold", "--out", str(train / "x"), "--sd-config", "z"]
    assert main(args) == 2
    assert "--sd-config does not apply to sgid filter" in capsys.readouterr().err


def test_a_failed_evaluate_start_leaves_nothing_that_blocks_the_retry(tmp_path, capsys) -> None:
    train = write_folder(tmp_path / "toy" / "train", {"a": 3, "b": 3})
    test = write_folder(tmp_path / "toy" / "test", {"a": 2, "b": 2}, offset=50)
    out = tmp_path / "out"
    common = ["evaluate", "--train", str(train), "--test", str(test), "--out", str(out), "--methods", "baseline"]
    common += ["--seeds", "1", "--epochs", "1", "--threads", "1", "--quiet"]
    # pre-trained weights that are not there: the start fails, and OUT is gone again
    assert main([*common, "--backbone", "vit_b16_in21k", "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "cannot load pre-trained weights for vit_b16_in21k" in capsys.readouterr().err
    assert not out.exists()
    # the retry with other settings is not refused as "an evaluation with different settings"
    assert main([*common, "--backbone", "small_cnn"]) == 0
    assert (out / "evaluation.json").is_file() and (out / "results.md").is_file()


def test_a_failed_start_in_an_existing_out_keeps_what_was_there(tmp_path) -> None:
    from sgid.evaluate.store import PROTOCOL_FILE, EvaluationStore

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError), EvaluationStore(out, {"format": 1}):
        raise RuntimeError("weights missing")
    assert out.is_dir() and not (out / PROTOCOL_FILE).exists()  # the folder was the user's: kept, emptied
    with EvaluationStore(out, {"format": 1}) as store:
        store.save_lr_search("d", "v", {"grid": [0.1], "chosen": 0.1})
    with pytest.raises(RuntimeError), EvaluationStore(out, {"format": 1}):
        raise RuntimeError("interrupted")
    assert (out / PROTOCOL_FILE).is_file()  # an earlier evaluation's work is never discarded
