"""What a new user meets first: progress that stays clean in a log, long jobs that say so first, a rerun with
nothing to do that loads no model, help texts that tell the truth, and ``sgid.augment`` named like the flags."""

from __future__ import annotations

import argparse
import inspect
import io
import json
import shutil

import pytest

import sgid
import sgid.pipeline as pipeline
import sgid.progress as progress
from conftest import FAST, make_image_folder
from evaluate_helpers import write_folder
from sgid.cli import build_parser, main
from sgid.errors import SgidError
from sgid.options import augment_options, resolve_options

# -- progress ------------------------------------------------------------------------------------------------


def test_progress_is_whole_lines_without_cursor_escapes_when_stderr_is_not_a_terminal(capsys) -> None:
    with progress.bar(10, "generating", "img", quiet=False) as bar:
        assert isinstance(bar, progress.LineProgress)
        bar.update(4)
        bar.set_postfix(loss="0.5")
        bar.update(6)
    err = capsys.readouterr().err
    assert err.startswith("generating: 10/10 img (100%) [") and "loss=0.5" in err and err.endswith("]\n")
    assert "\r" not in err and "\x1b" not in err
    with progress.bar(3, "never moved", "img", quiet=False):
        pass
    assert capsys.readouterr().err == ""  # a bar that failed at once says nothing


def test_a_long_bar_writes_a_line_now_and_then(monkeypatch, capsys) -> None:
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    bar = progress.LineProgress(4, "runs", "run")
    for at in (31.0, 40.0, 70.0):  # a line, too soon for another, a line
        now[0] = at
        bar.update(1)
    bar.close()  # and the last state
    lines = capsys.readouterr().err.splitlines()
    expected = ["runs: 1/4 run (25%)", "runs: 3/4 run (75%)", "runs: 3/4 run (75%)"]
    assert [line.split(" [")[0] for line in lines] == expected
    assert "eta" in lines[0]


def test_evaluate_and_augment_logs_hold_no_cursor_escapes(tmp_path, cache_dir, capsys) -> None:
    train = write_folder(tmp_path / "toy" / "train", {"a": 3, "b": 3})
    test = write_folder(tmp_path / "toy" / "test", {"a": 2, "b": 2}, offset=50)
    args = ["evaluate", "--train", str(train), "--test", str(test), "--out", str(tmp_path / "eval")]
    assert main([*args, "--methods", "baseline", "--seeds", "1", "--epochs", "2", "--threads", "1"]) == 0
    source = make_image_folder(tmp_path / "in", {"cat": 2})
    assert main(["augment", str(source), "--out", str(tmp_path / "aug"), "--models", "tiny", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert "toy baseline seed 0: 2/2 epoch (100%)" in err and "generating: 2/2 img (100%)" in err


def test_interrupted_starts_on_a_line_of_its_own(monkeypatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)  # a drawing tqdm bar, as on a terminal
    monkeypatch.setattr("sys.stderr", stream)

    def interrupted(args: argparse.Namespace) -> int:
        bar = progress.bar(10, "generating", "img", quiet=False)
        bar.update(3)
        bar.refresh()
        raise KeyboardInterrupt

    parser = build_parser()
    monkeypatch.setattr("sgid.cli.build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["demo"].set_defaults(run=interrupted)  # type: ignore[union-attr]
    assert main(["demo"]) == 130
    text = stream.getvalue()
    assert "generating" in text and "\nsgid: interrupted; rerun the same command to resume\n" in text


# -- long jobs say so first; nothing to do ---------------------------------------------------------------------


def test_evaluate_says_what_it_plans_and_measures_an_estimate(tmp_path, capsys) -> None:
    train = write_folder(tmp_path / "toy" / "train", {"a": 3, "b": 3})
    test = write_folder(tmp_path / "toy" / "test", {"a": 2, "b": 2}, offset=50)
    args = ["evaluate", "--train", str(train), "--test", str(test), "--out", str(tmp_path / "eval")]
    args += ["--backbone", "small_cnn", "--methods", "baseline,randaugment", "--seeds", "2", "--threads", "1"]
    assert main([*args, "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert "planned: 4 training run(s) of small_cnn, 3 epochs each, 72 image passes in all, on cpu" in err
    assert "estimate: about " in err and "(measured on its first epoch)" in err


def test_resnet50_for_300_epochs_on_a_cpu_says_so_before_training(capsys) -> None:
    from evaluate_helpers import tiny_data
    from sgid.evaluate import EvalConfig
    from sgid.evaluate.api import WorkPlan, train_settings

    data = tiny_data(per_image=0)
    config = EvalConfig(methods=("baseline", "randaugment"), backbone="resnet50", seeds=5)
    spec, variants = config.check()
    settings = {data.name: train_settings(data, spec, config, "cpu")}
    todo = [(data, v, s) for v in variants for s in range(5)]
    WorkPlan.of(todo, settings, config, "cpu").announce()
    line = capsys.readouterr().err
    assert line.startswith("planned: 10 training run(s) of resnet50, 300 epochs each, 36,000 image passes")
    assert "long on a CPU: to make it small, --backbone small_cnn --epochs 5 --seeds 2 --shots 10" in line
    small = EvalConfig(methods=("baseline",), backbone="small_cnn", seeds=1, epochs=2, shots=2)
    spec, variants = small.check()
    WorkPlan.of(
        [(data, variants[0], 0)], {data.name: train_settings(data, spec, small, "cpu")}, small, "cpu"
    ).announce()
    assert "to make it small" not in capsys.readouterr().err


def test_a_long_evaluation_names_the_flags_that_make_it_small(capsys) -> None:
    from sgid.evaluate.api import WorkPlan

    work = WorkPlan(30, 30 * 300 * 50_000, "30 runs", ["--backbone small_cnn", "--epochs 5"], quiet=False)
    work.epoch_done(0, 60.0, 50_000)  # a minute per epoch: 150 hours
    work.epoch_done(1, 120.0, 100_000)  # said once
    err = capsys.readouterr().err
    assert err.count("estimate:") == 1 and "about 150h00m" in err and "--backbone small_cnn --epochs 5" in err


def test_augment_on_a_cpu_with_real_models_says_how_to_make_it_small(tmp_path, capsys) -> None:
    from sgid.config import AugmentConfig
    from sgid.dataset import scan
    from sgid.models.loading import ModelChoice, ModelRef
    from sgid.runstore import RunStore

    source = make_image_folder(tmp_path / "in", {"cat": 4, "dog": 4})
    config = AugmentConfig.build(source, tmp_path / "out", device="cpu", multiplier=2)
    real = ModelChoice(*(ModelRef(n, n) for n in ("blip", "clip", "sd-v1-5", "pix2pix")))
    store = RunStore(config.out_dir, {}, config.identity())
    pipeline.Augmenter(config)._announce(scan(source), store, real)
    line = capsys.readouterr().err
    assert line.startswith("planned: 16 image(s) with sgid, 50 denoising steps each (sd-v1-5, cpu)")
    assert "--steps 20 --multiplier 1" in line and "--models tiny" in line


def test_augment_says_how_long_the_generation_takes_after_its_first_batch(tmp_path, cache_dir, capsys) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 2, "dog": 1})
    args = ["augment", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", "--steps", "2"]
    assert main([*args, "--batch-size", "1", "--cache-dir", str(cache_dir)]) == 0
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("estimate: ")]
    assert line.endswith("for the planned generation (measured on its first batch)")
    assert err.index("planned: 3 image(s)") < err.index("estimate: ") < err.index("generated 3, skipped 0")
    # one batch is all the work: nothing to estimate
    assert main([*args, "--out", str(tmp_path / "one"), "--batch-size", "4", "--cache-dir", str(cache_dir)]) == 0
    assert "estimate: " not in capsys.readouterr().err


def test_a_long_generation_estimate_names_the_flags_that_make_it_small(capsys) -> None:
    progress.estimate_note(700.0, 4, 8, "the planned generation", "its first batch", ["--steps 20"], quiet=False)
    assert capsys.readouterr().err == (
        "estimate: about 23m20s for the planned generation (measured on its first batch); to make it small: "
        "--steps 20\n"
    )
    progress.estimate_note(70.0, 4, 8, "the planned generation", "its first batch", ["--steps 20"], quiet=False)
    assert "to make it small" not in capsys.readouterr().err


def test_a_rerun_with_nothing_to_do_loads_no_model(tmp_path, cache_dir, capsys, monkeypatch) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 2})
    (source / "cat" / "broken.png").write_bytes(b"not a png")  # unreadable: never done, never work either
    first = pipeline.augment(source, tmp_path / "out", cache_dir=cache_dir, **{**FAST, "steps": 2})
    manifest = (tmp_path / "out" / "metadata.jsonl").read_bytes()

    def no_models(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sgid.execute.load_stages", no_models)
    again = pipeline.augment(source, tmp_path / "out", cache_dir=cache_dir, **{**FAST, "quiet": False, "steps": 2})
    assert "nothing to do: every image of this run is already in" in capsys.readouterr().err
    assert (again.generated, again.already_done, again.total_images) == (0, 2, 2) and again.failed == first.failed
    assert (tmp_path / "out" / "metadata.jsonl").read_bytes() == manifest
    # a run stopped before its manifest was written is not "nothing to do": the manifest is rebuilt
    (tmp_path / "out" / "metadata.jsonl").unlink()
    monkeypatch.undo()
    pipeline.augment(source, tmp_path / "out", cache_dir=cache_dir, **{**FAST, "steps": 2})
    assert (tmp_path / "out" / "metadata.jsonl").read_bytes() == manifest
    # nor is a run whose manifest was edited or damaged since: it is rebuilt from the journal
    for damage in (b"{bad\n", manifest.replace(b'"label": "cat"', b'"label": 5', 1)):
        assert damage != manifest
        (tmp_path / "out" / "metadata.jsonl").write_bytes(damage)
        pipeline.augment(source, tmp_path / "out", cache_dir=cache_dir, **{**FAST, "steps": 2})
        assert (tmp_path / "out" / "metadata.jsonl").read_bytes() == manifest
    # nor is a run one of whose images was cut short since: that image is made again, the same bytes
    image = sorted((tmp_path / "out" / "cat").glob("*.png"))[0]
    made = image.read_bytes()
    image.write_bytes(made[: len(made) // 2])
    capsys.readouterr()
    again = pipeline.augment(source, tmp_path / "out", cache_dir=cache_dir, **{**FAST, "quiet": False, "steps": 2})
    assert "1 image(s) changed since this run wrote them (another size): made again" in capsys.readouterr().err
    assert (again.generated, again.already_done) == (1, 1)
    assert image.read_bytes() == made and (tmp_path / "out" / "metadata.jsonl").read_bytes() == manifest


# -- sgid.augment named like the flags ---------------------------------------------------------------------------


def _augment_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["augment"]  # type: ignore[union-attr]


def test_every_augment_flag_is_a_keyword_of_the_python_api_and_back() -> None:
    dests = {a.dest for a in _augment_parser()._actions if a.dest not in ("help", "input", "out")}
    parameters = set(inspect.signature(sgid.augment).parameters) - {"input_dir", "out_dir", "print_summary"}
    assert dests == parameters
    for action in _augment_parser()._actions:
        if action.dest in parameters:  # the long flag is the keyword with '-' for '_'
            assert "--" + action.dest.replace("_", "-") in action.option_strings, action.option_strings


def test_keywords_named_like_flags_and_their_old_names_both_work() -> None:
    assert resolve_options({"no_cache": True, "template": ["a {label}"], "instruction": "x"}) == {
        "caption_cache": False,
        "templates": ["a {label}"],
        "instructions": "x",
    }
    assert resolve_options({"caption_cache": False, "templates": ("a {label}",), "instructions": ("x",)}) == {
        "caption_cache": False,
        "templates": ("a {label}",),
        "instructions": ("x",),
    }
    assert resolve_options({"no_cache": None, "noise": 0.3}) == {"noise": 0.3}  # None: not given
    assert {o.name for o in augment_options() if o.aliases} == {"no_cache", "template", "instruction"}


def test_an_unknown_keyword_names_the_closest(tmp_path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'noice'; did you mean 'noise'"):
        sgid.augment(tmp_path, tmp_path / "out", noice=0.3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'multipler'; did you mean 'multiplier'"):
        sgid.augment(tmp_path, tmp_path / "out", multipler=2)
    with pytest.raises(TypeError, match="both 'no_cache' and 'caption_cache'"):
        sgid.augment(tmp_path, tmp_path / "out", no_cache=True, caption_cache=True)


def test_the_python_api_prints_no_summary_unless_asked(tmp_path, cache_dir, capsys) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 1})
    options = {**FAST, "quiet": False, "steps": 2, "cache_dir": cache_dir, "no_cache": True, "template": None}
    summary = sgid.augment(source, tmp_path / "out", **options)
    assert summary.generated == 1 and "generated 1, skipped 0" not in capsys.readouterr().err
    shutil.rmtree(tmp_path / "out")
    summary = sgid.augment(source, tmp_path / "out", print_summary=True, **options)
    assert summary.line() in capsys.readouterr().err


def test_the_cli_prints_the_summary(tmp_path, cache_dir, capsys) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 1})
    assert main(["augment", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", "--steps", "2"]) == 0
    assert "generated 1, skipped 0 already done" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    # provenance names the models the method ran with, never one it did not use (sgid uses no InstructPix2Pix)
    models = json.loads((tmp_path / "out" / "run.json").read_text())["models"]
    assert models == {"captioner": "tiny:blip", "scorer": "tiny:clip", "generator": "tiny:sd"}
    assert main(["augment", str(source), "--out", str(tmp_path / "perturbed"), "--method", "randaugment"]) == 0
    assert json.loads((tmp_path / "perturbed" / "run.json").read_text())["models"] == {}


# -- help texts ----------------------------------------------------------------------------------------------


def _help(*command: str) -> str:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    return sub[command[0]].format_help() if command else parser.format_help()


def test_help_lists_the_methods_and_the_chain_syntax() -> None:
    from sgid.commands.augment import METHOD_NAMES
    from sgid.methods import METHODS

    assert sorted(METHOD_NAMES.split(", ")) == sorted(METHODS.names())
    text = " ".join(_help("augment").split())
    assert f"--method METHOD augmentation method: {METHOD_NAMES}; or a chain a+b" in text
    assert "e.g. text2img+sgid" in text


def test_help_defaults_are_the_real_ones() -> None:
    demo = " ".join(_help("demo").split())
    assert "[default: tiny]" in demo and "[default: default]" not in demo
    for command in ("filter", "metrics"):
        text = " ".join(_help(command).split())
        assert "[default: the run's own CLIP]" in text
        assert "--captioner" not in text and "--sd-model" not in text  # accepted, but unused: not offered
        assert "where tiny models and the image-feature cache live" in text  # no captions there
    assert "local folder [default: the preset's]" in " ".join(_help("augment").split())
    for command in ("augment", "demo", "filter", "metrics"):
        assert "fp32, fp16, bf16 [default: auto]" in " ".join(_help(command).split())


@pytest.mark.parametrize("command", ["augment", "demo", "evaluate", "filter", "learn-concepts", "metrics"])
def test_help_is_plain_text(command: str) -> None:
    text = _help(command)
    assert "``" not in text and ":func:" not in text and ":class:" not in text


def test_a_help_flag_for_a_clip_only_command_is_still_accepted(tmp_path, capsys) -> None:
    with pytest.raises(SgidError):
        build_parser().parse_args(["metrics", "r", "--out", "o", "--no-such-flag"])
    args = build_parser().parse_args(["metrics", "r", "--out", "o", "--captioner", "x"])
    assert args.captioner == "x"
