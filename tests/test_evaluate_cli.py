"""``sgid evaluate`` end to end on tiny folders with small_cnn: outputs, resume, reproducibility, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import sgid.evaluate.api as api
from evaluate_helpers import TINY_CLIP, TINY_VIT, tiny_data, write_folder, write_generated
from sgid.cli import main
from sgid.errors import SgidError
from sgid.evaluate import EvalConfig, evaluate, load_classifier, load_folder_dataset, predict_proba
from sgid.evaluate.zeroshot import zero_shot_accuracy

FAST = ["--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8", "--threads", "1"]


@pytest.fixture
def toy(tmp_path: Path) -> dict[str, Path]:
    train = write_folder(tmp_path / "toy" / "train", {"cat": 6, "dog": 6})
    test = write_folder(tmp_path / "toy" / "test", {"cat": 4, "dog": 4}, offset=100)
    generated = write_generated(tmp_path / "toy-sgid", train, per_image=2, originals=True)
    return {"train": train, "test": test, "generated": generated, "out": tmp_path / "out"}


def _args(toy: dict[str, Path], *extra: str, out: Path | None = None, quiet: bool = True) -> list[str]:
    return [
        "evaluate",
        "--train",
        str(toy["train"]),
        "--test",
        str(toy["test"]),
        "--out",
        str(out or toy["out"]),
        *FAST,
        *(["--quiet"] if quiet else []),
        *extra,
    ]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_evaluate_writes_runs_table_plots_and_scipys_p_values(toy, capsys) -> None:
    code = main(
        _args(
            toy,
            "--generated",
            str(toy["generated"]),
            "--methods",
            "randaugment,generated+cutmix",
            "--mix",
            "replace",
            "--proportion",
            "0,1",
            "--seeds",
            "3",
            quiet=False,
        )
    )
    assert code == 0
    results = _results(toy["out"])
    runs = results["runs"]
    assert len(runs) == 4 * 3  # baseline, randaugment, generated+cutmix at p=0 and p=1; three seeds each
    assert {(r["variant"], r["seed"]) for r in runs} == {
        (v, s)
        for v in ("baseline", "randaugment", "generated+cutmix@replace-p0", "generated+cutmix@replace-p1")
        for s in range(3)
    }
    by = {(r["variant"], r["seed"]): r for r in runs}
    for seed in range(3):
        p0 = by[("generated+cutmix@replace-p0", seed)]["details"]
        p1 = by[("generated+cutmix@replace-p1", seed)]["details"]
        assert p0["plan_generated"] == 0 and p0["plan_size"] == 12
        assert p1["plan_generated"] == 12 and p1["plan_size"] == 12
        assert p1["generated_fraction_seen"] == 1.0
        assert set(by[("baseline", seed)]["per_class"]) == {"cat", "dog"}
    for row in results["summary"]:
        if row["dataset"] == "toy" and row["variant"] != "baseline":
            method = [by[(row["variant"], s)]["accuracy"] for s in range(3)]
            base = [by[("baseline", s)]["accuracy"] for s in range(3)]
            expected = stats.ttest_rel(method, base).pvalue
            assert row["p_value"] is None if expected != expected else row["p_value"] == pytest.approx(expected)
    table = (toy["out"] / "results.md").read_text()
    assert "| Method | toy | Avg. |" in table and "| generated+cutmix [replace p=1] |" in table
    assert (toy["out"] / "plots" / "per_class_toy.png").is_file()
    assert (toy["out"] / "plots" / "accuracy_vs_p_toy.png").is_file()
    assert (toy["out"] / "runs" / "toy" / "baseline" / "seed2.json").is_file()
    printed = capsys.readouterr()
    assert "| Method | toy | Avg. |" in printed.out
    assert "toy baseline seed 2" in printed.err and "epoch" in printed.err  # progress per run and epoch


def test_results_json_p_values_equal_scipys_on_its_own_per_seed_accuracies(toy, monkeypatch) -> None:
    from sgid.evaluate.train import Accuracy

    planned = iter(
        [
            0.50,
            0.55,
            0.53,
            0.60,
            0.57,  # baseline, seeds 0-4
            0.58,
            0.61,
            0.60,
            0.66,
            0.62,  # cutmix
            0.40,
            0.52,
            0.47,
            0.49,
            0.45,
        ]
    )  # moex
    monkeypatch.setattr(api, "test_accuracy", lambda *a: Accuracy(next(planned), (None, None), 8))
    assert main(_args(toy, "--methods", "cutmix,moex", "--seeds", "5")) == 0
    results = _results(toy["out"])
    accuracy = {(r["variant"], r["seed"]): r["accuracy"] for r in results["runs"]}
    rows = {r["variant"]: r for r in results["summary"] if r["dataset"] == "toy"}
    for variant in ("cutmix", "moex"):
        expected = stats.ttest_rel(
            [accuracy[(variant, s)] for s in range(5)], [accuracy[("baseline", s)] for s in range(5)]
        ).pvalue
        assert rows[variant]["p_value"] == pytest.approx(expected, rel=1e-12)
        assert rows[variant]["significant"] == (expected < 0.05)
    assert rows["cutmix"]["mark"] == "*" and rows["moex"]["mark"] == "†"
    assert "| cutmix | 61.40 ± 2.97* |" in (toy["out"] / "results.md").read_text()


def test_an_interrupted_sweep_resumes_without_redoing_finished_runs(toy, monkeypatch) -> None:
    real_run_one = api.run_one
    calls: list[tuple[str, int]] = []

    def interrupted(data, variant, seed, *rest):  # type: ignore[no-untyped-def]
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append((variant.slug, seed))
        return real_run_one(data, variant, seed, *rest)

    monkeypatch.setattr(api, "run_one", interrupted)
    args = _args(toy, "--methods", "baseline,cutmix,moex", "--seeds", "2")
    assert main(args) == 130  # "interrupted; rerun the same command to resume"
    finished = sorted((toy["out"] / "runs").rglob("seed*.json"))
    assert len(finished) == 3
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    calls.clear()
    monkeypatch.setattr(api, "run_one", lambda *a: calls.append((a[1].slug, a[2])) or real_run_one(*a))
    assert main(args) == 0
    assert len(calls) == 3 * 2 - 3  # only the unfinished runs
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert len(_results(toy["out"])["runs"]) == 6


def test_resuming_with_other_settings_is_refused_unless_overwrite(toy, capsys) -> None:
    assert main(_args(toy, "--methods", "baseline", "--seeds", "1")) == 0
    assert main(_args(toy, "--methods", "baseline", "--seeds", "1", "--batch-size", "4")) == 2
    assert "different settings (batch_size)" in capsys.readouterr().err
    assert main(_args(toy, "--methods", "baseline", "--seeds", "1", "--batch-size", "4", "--overwrite")) == 0
    assert _results(toy["out"])["runs"][0]["details"]["batch_size"] == 4


def test_runs_are_reproducible(toy, tmp_path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(_args(toy, "--methods", "random_erasing,randaugment,moex", "--seeds", "1", out=out)) == 0
    first, second = (_results(out)["runs"] for out in outs)
    assert [(r["accuracy"], r["details"]["final_train_loss"]) for r in first] == [
        (r["accuracy"], r["details"]["final_train_loss"]) for r in second
    ]


def test_every_method_starts_from_the_same_weights_at_a_seed(toy, monkeypatch) -> None:
    seen: dict[str, torch.Tensor] = {}
    real_build = api.fit.__globals__["build_model"]

    def spy(settings, num_classes):  # type: ignore[no-untyped-def]
        model = real_build(settings, num_classes)
        seen[str(len(seen))] = model.stem[0].weight.detach().clone()
        return model

    monkeypatch.setitem(api.fit.__globals__, "build_model", spy)
    assert main(_args(toy, "--methods", "baseline,cutmix", "--seeds", "1")) == 0
    assert torch.equal(seen["0"], seen["1"])


def test_k_shot_and_fraction_subsets(toy, tmp_path) -> None:
    assert main(_args(toy, "--methods", "baseline", "--seeds", "2", "--shots", "2", out=tmp_path / "k")) == 0
    assert [r["details"]["train_real"] for r in _results(tmp_path / "k")["runs"]] == [4, 4]
    assert main(_args(toy, "--methods", "baseline", "--seeds", "1", "--fraction", "0.5", out=tmp_path / "f")) == 0
    assert _results(tmp_path / "f")["runs"][0]["details"]["train_real"] == 6


def test_generated_images_follow_their_sources_into_a_k_shot_subset(toy) -> None:
    assert (
        main(_args(toy, "--generated", str(toy["generated"]), "--methods", "generated", "--seeds", "1", "--shots", "2"))
        == 0
    )
    details = next(r["details"] for r in _results(toy["out"])["runs"] if r["variant"] == "generated@add")
    assert details["train_real"] == 4 and details["plan_generated"] == 8  # two per source; "original" rows skipped


def test_save_models_writes_loadable_classifiers(toy) -> None:
    assert main(_args(toy, "--methods", "baseline", "--seeds", "2", "--save-models")) == 0
    for seed in (0, 1):
        model, meta = load_classifier(toy["out"] / "models" / "toy" / "baseline" / f"seed{seed}")
        assert meta["classes"] == ["cat", "dog"] and meta["backbone"] == "small_cnn"
        image = Image.open(toy["test"] / "cat" / "0.png")
        assert predict_proba(model, meta, [image]).shape == (1, 2)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backbone", "resnet51"], "unknown backbone 'resnet51'; choose from: resnet50"),
        (["--methods", "baseline,mixup"], "unknown method component 'mixup'"),
        (["--mix", "blend", "--methods", "generated"], "unknown mix mode 'blend'; choose from: add, replace, swap"),
        (["--methods", "generated", "--mix", "replace", "--proportion", "1.5"], r"--proportion must be in \[0, 1\]"),
        (["--methods", "generated", "--mix", "replace"], "--mix replace needs --proportion"),
        (["--methods", "generated", "--mix", "balance", "--proportion", "0.5"], "takes no --proportion"),
        (["--methods", "randaugment", "--proportion", "0.5"], "--proportion applies to methods with generated images"),
        (["--methods", "generated"], "need --generated DIR"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--shots", "2", "--fraction", "0.5"], "alternatives"),
        (["--shots", "7"], "fewer than --shots 7"),
        (["--fraction", "1.5"], r"--fraction must be in \(0, 1\]"),
        (["--proportion", "x"], "expected numbers in"),
        (["--linear-probe"], "--linear-probe needs a pre-trained backbone"),
        (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
        (["--backbone", "zero_shot_clip", "--methods", "randaugment"], "is not trained"),
        (["--compare-to", "mixup"], "invalid --compare-to 'mixup'; choose from: baseline, best, random_erasing"),
        (["--correction", "bonferroni"], "invalid --correction 'bonferroni'; choose from: none, holm"),
        (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
        (["--image-size", "100000"], "--image-size must be at most 4096, got 100000"),
    ],
)
def test_bad_options_fail_before_training_with_one_line(toy, capsys, extra, message, forbid_model_loading) -> None:
    assert main(_args(toy, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("sgid: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not toy["out"].exists()  # nothing was trained or written


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--test", "t", "--out", "o"], "pass --train DIR and --test DIR"),
        (
            ["evaluate", "--train", "/nonexistent/train", "--test", "/nonexistent/test", "--out", "o"],
            "--train folder not found: /nonexistent/train",
        ),
        (["evaluate", "--dataset", "cifar10", "--out", "o"], "--dataset needs --data-root"),
        (["evaluate", "--dataset", "imagenet", "--data-root", ".", "--out", "o"], "unknown dataset 'imagenet'"),
        (["evaluate", "--train", "d", "--test", "d/", "--out", "o"], "--train d and --test d/ overlap: the test"),
        (["evaluate", "--train", "d", "--test", "d/test", "--out", "o"], "would be trained on"),
        (["evaluate", "--train", "a", "--val", "b", "--test", "b", "--out", "o"], "used to choose the learning rate"),
    ],
)
def test_bad_data_options_are_one_line_errors(args, message, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_paper_datasets_are_never_downloaded(tmp_path, capsys) -> None:
    assert main(["evaluate", "--dataset", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cifar10 is not under --data-root" in err and "never downloads" in err
    assert list(tmp_path.iterdir()) == []


def test_generated_folder_from_other_images_is_refused(toy, tmp_path, capsys) -> None:
    other = write_folder(tmp_path / "other", {"cat": 2, "dog": 2})
    wrong = write_generated(tmp_path / "wrong", other, source_prefix="elsewhere/")
    assert main(_args(toy, "--generated", str(wrong), "--methods", "generated")) == 2
    assert "none of the generated images in" in capsys.readouterr().err


def test_generated_folder_made_from_test_images_is_refused(toy, tmp_path, capsys) -> None:
    """Same relative paths as the training images ("cat/0.png"), but the content of the test images."""
    leak = write_generated(tmp_path / "leak", toy["test"])
    assert main(_args(toy, "--generated", str(leak), "--methods", "generated")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--generated {leak} was made from test images: cat/0_sgid_0.png" in err
    assert "test/validation image cat/0.png" in err
    assert not toy["out"].exists()


def test_generated_folder_with_other_sources_is_refused_at_the_first_mismatch(toy, tmp_path, capsys) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(toy["train"], changed)
    Image.new("RGB", (32, 32), "red").save(changed / "cat" / "3.png")  # one source differs from --train's
    wrong = write_generated(tmp_path / "wrong", changed)
    assert main(_args(toy, "--generated", str(wrong), "--methods", "generated")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cat/3_sgid_0.png was made from another cat/3.png than the training image" in err
    rows = [json.loads(line) for line in (toy["generated"] / "metadata.jsonl").read_text().splitlines()]
    rows[-1]["source"] = "dog/99.png"  # not a training image at all
    extra = tmp_path / "extra"
    shutil.copytree(toy["generated"], extra)
    (extra / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(_args(toy, "--generated", str(extra), "--methods", "generated")) == 2
    assert "was made from dog/99.png, which is not a training image" in capsys.readouterr().err


def test_generated_rows_without_source_sha256_are_linked_by_path_with_a_note(toy, tmp_path, capsys) -> None:
    old = write_generated(tmp_path / "old", toy["train"], sha256=False)
    assert main(_args(toy, "--generated", str(old), "--methods", "generated", "--seeds", "1")) == 0
    assert f"note: 12 generated image(s) in {old} record no source_sha256" in capsys.readouterr().err


def test_python_api_restores_torch_threads_and_returns_the_summary(tmp_path) -> None:
    before = torch.get_num_threads()
    result = evaluate(
        tiny_data(),
        EvalConfig(methods=("baseline", "generated"), seeds=2, epochs=1, batch_size=8, threads=1, quiet=True),
        tmp_path / "api",
    )
    assert torch.get_num_threads() == before
    assert result.trained == 4 and result.reused == 0
    assert [s.label for s in result.summary if s.dataset == "tiny"] == ["baseline", "generated [add]"]


def vit_baseline(seeds: int) -> EvalConfig:
    """The baseline on an untrained tiny ViT at 32 px: a pretrained backbone's recipe, so the lr is searched."""
    return EvalConfig(
        methods=("baseline",),
        backbone="vit_b16_in21k",
        pretrained=False,
        arch=TINY_VIT,
        image_size=32,
        seeds=seeds,
        epochs=1,
        batch_size=8,
        threads=1,
        quiet=True,
    )


def test_pretrained_backbones_choose_the_lr_on_validation(tmp_path) -> None:
    config = vit_baseline(seeds=1)
    result = evaluate(tiny_data(per_image=0), config, tmp_path / "vit")
    search = json.loads((tmp_path / "vit" / "runs" / "tiny" / "baseline" / "lr_search.json").read_text())
    assert search["grid"] == [1e-4, 3e-4, 1e-3, 3e-3] and set(search["val_accuracy"]) == {
        "0.0001",
        "0.0003",
        "0.001",
        "0.003",
    }
    assert result.records[0].details["lr"] == search["chosen"]
    cifar = evaluate(tiny_data(per_image=0, name="cifar10"), config, tmp_path / "cifar")
    assert cifar.records[0].details["lr"] == 5e-5 and cifar.records[0].details["epochs"] == 1


def test_zero_shot_clip_is_a_reference_row(tmp_path) -> None:
    clip = {"pretrained": False, "image_size": 32, "quiet": True, "threads": 1}
    alone = evaluate(
        tiny_data(per_image=0), EvalConfig(backbone="zero_shot_clip", arch=TINY_CLIP, **clip), tmp_path / "zs"
    )
    assert [(r.variant, r.reference, r.details["test_size"]) for r in alone.records] == [("zero_shot_clip", True, 8)]
    config = EvalConfig(
        methods=("baseline",), seeds=2, epochs=1, batch_size=8, zero_shot_row=True, zero_shot_arch=TINY_CLIP, **clip
    )  # type: ignore[arg-type]
    torch.manual_seed(1)  # what the process drew before must not change an untrained model's row
    beside = evaluate(tiny_data(per_image=0), config, tmp_path / "row")
    assert beside.records[-1].per_class == alone.records[0].per_class  # deterministic, untrained
    rows = [line for line in (tmp_path / "row" / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[2].startswith("| baseline |") and rows[3].startswith("| zero_shot_clip (reference) |")
    assert "±" not in rows[3] and beside.summary[-1].p_value is None


def test_an_untrained_zero_shot_model_does_not_depend_on_earlier_draws() -> None:
    data = tiny_data(per_image=0)
    seen = set()
    for earlier in range(4):
        torch.manual_seed(earlier)
        acc = zero_shot_accuracy(data.classes, data.test, image_size=32, arch=TINY_CLIP, pretrained=False)
        seen.add((acc.accuracy, acc.per_class))
    assert len(seen) == 1, seen


def test_adding_methods_and_a_generated_folder_later_reuses_the_finished_runs(toy) -> None:
    assert main(_args(toy, "--methods", "baseline", "--seeds", "2")) == 0
    stamps = {p: p.stat().st_mtime_ns for p in (toy["out"] / "runs").rglob("seed*.json")}
    more = ["--methods", "baseline,generated", "--generated", str(toy["generated"]), "--seeds", "2"]
    assert main(_args(toy, *more)) == 0
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert {r["variant"] for r in _results(toy["out"])["runs"]} == {"baseline", "generated@add"}


def test_an_exported_split_links_back_to_its_examples(tmp_path) -> None:
    from sgid.evaluate.data import export_image_folder, load_folder_dataset

    data = tiny_data(per_image=0)
    assert export_image_folder(data.train, tmp_path / "train") == len(data.train)
    reread = load_folder_dataset(tmp_path / "train", tmp_path / "train")
    assert [ex.key for ex in reread.train] == sorted(ex.key for ex in data.train)
    assert reread.classes == data.classes


@pytest.mark.slow
def test_a_real_augment_run_links_to_its_training_images(augmented_run: Path, tmp_path: Path) -> None:
    source = augmented_run.parent / "input"
    test = shutil.copytree(source, tmp_path / "test")  # evaluate refuses a test folder that is trained on
    args = [
        "evaluate",
        "--train",
        str(source),
        "--test",
        str(test),
        "--generated",
        str(augmented_run),
        "--methods",
        "generated",
        "--mix",
        "replace",
        "--proportion",
        "0.5,1",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "out"),
        *FAST,
        "--quiet",
    ]
    assert main(args) == 0
    runs = {(r["variant"], r["seed"]): r["details"] for r in _results(tmp_path / "out")["runs"]}
    assert runs[("generated@replace-p1", 0)]["plan_generated"] == 6  # 3 images per class, all replaced
    assert runs[("generated@replace-p0.5", 1)]["plan_generated"] == 4  # round(0.5 · 3) = 2 per class


def test_swap_training_draws_generated_images_at_rate_p(toy) -> None:
    assert (
        main(
            _args(
                toy,
                "--generated",
                str(toy["generated"]),
                "--methods",
                "generated",
                "--mix",
                "swap",
                "--proportion",
                "0.5",
                "--seeds",
                "1",
                "--epochs",
                "8",
            )
        )
        == 0
    )
    details = next(r["details"] for r in _results(toy["out"])["runs"] if r["variant"] == "generated@swap-p0.5")
    assert details["plan_size"] == 12 and details["plan_generated"] == 0 and details["draws"] == 96
    assert 0.35 < details["generated_fraction_seen"] < 0.65  # 96 seeded coin flips at p = 0.5


def test_worker_processes_do_not_change_the_results(toy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    methods = ["--methods", "baseline,randaugment,random_erasing", "--seeds", "1", "--epochs", "2"]
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"workers-{workers}"
        assert main(_args(toy, *methods, "--workers", workers, out=out)) == 0
        runs[workers] = [(r["variant"], r["accuracy"], r["details"]["final_train_loss"]) for r in _results(out)["runs"]]
    assert len(runs["0"]) == 3 and runs["0"] == runs["2"]


def test_a_resumed_sweep_does_not_redo_its_learning_rate_search(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = vit_baseline(seeds=2)
    fits: list[str] = []
    real_fit, real_run_one = api.fit, api.run_one

    def counting_fit(*args, desc: str = "", **kwargs):  # type: ignore[no-untyped-def]
        fits.append(desc)
        return real_fit(*args, desc=desc, **kwargs)

    def interrupted(data, variant, seed, *rest):  # type: ignore[no-untyped-def]
        if seed == 1:
            raise KeyboardInterrupt("test: interrupted before seed 1")
        return real_run_one(data, variant, seed, *rest)

    monkeypatch.setattr(api, "fit", counting_fit)
    monkeypatch.setattr(api, "run_one", interrupted)
    with pytest.raises(KeyboardInterrupt, match="before seed 1"):
        evaluate(tiny_data(per_image=0), config, tmp_path / "vit")
    assert [d.split()[-2] for d in fits] == ["lr", "lr", "lr", "lr", "seed"]  # the grid of 4, then seed 0
    search = json.loads((tmp_path / "vit" / "runs" / "tiny" / "baseline" / "lr_search.json").read_text())
    fits.clear()
    monkeypatch.setattr(api, "run_one", real_run_one)
    resumed = evaluate(tiny_data(per_image=0), config, tmp_path / "vit")
    assert fits == ["tiny baseline seed 1"] and (resumed.trained, resumed.reused) == (1, 1)
    assert [r.details["lr"] for r in resumed.records] == [search["chosen"]] * 2


def _truncate(path: Path) -> None:
    """Cut a PNG to two thirds: its header still reads, its pixels do not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def test_unreadable_images_are_left_out_with_their_reason_not_a_stop_half_way(toy, capsys, monkeypatch) -> None:
    """A damaged training, test or generated image is found before training, left out, warned about and listed
    in results.json (with a run's images made from a damaged training image): the other images still count.
    The folders are given as relative paths, as people type them."""
    _truncate(toy["train"] / "dog" / "5.png")
    _truncate(toy["test"] / "cat" / "3.png")
    _truncate(toy["generated"] / "cat" / "0_sgid_1.png")
    monkeypatch.chdir(toy["train"].parent.parent)
    train, test, generated = (Path(toy[k]).relative_to(Path.cwd()) for k in ("train", "test", "generated"))
    data = load_folder_dataset(train, test, generated=[str(generated)])
    assert len(data.train) == 11 and "dog/5.png" not in {ex.key for ex in data.train}
    assert len(data.test) == 7 and "cat/3.png" not in {ex.key for ex in data.test}
    kept = {ex.key.split(":")[1] for ex in data.generated}
    assert len(data.generated) == 24 - 1 - 2 and "cat/0_sgid_1.png" not in kept
    assert not {ex.source for ex in data.generated} & {"dog/5.png"}

    args = ["evaluate", "--train", str(train), "--test", str(test), "--out", "out", *FAST, "--quiet"]
    assert main([*args, "--generated", str(generated), "--methods", "generated", "--seeds", "1"]) == 0
    err = capsys.readouterr().err
    assert "--train" in err and "1 unreadable image(s) left out: dog/5.png (corrupt or truncated image" in err
    assert "--test" in err and "cat/3.png" in err
    assert "cat/0_sgid_1.png" in err and "delete them and rerun the sgid command that made the folder" in err
    assert "2 image(s) made from unreadable training images left out (dog/5_sgid_0.png: made from unreadable" in err
    results = _results(Path("out"))
    skipped = {(s["dataset"], s["folder"], s["image"], s["class"]) for s in results["skipped_images"]}
    assert skipped == {
        ("toy", "--train", "dog/5.png", "dog"),
        ("toy", "--test", "cat/3.png", "cat"),
        ("toy", "--generated", "cat/0_sgid_1.png", "cat"),
        ("toy", "--generated", "dog/5_sgid_0.png", "dog"),
        ("toy", "--generated", "dog/5_sgid_1.png", "dog"),
    }
    reasons = {s["image"]: s["reason"] for s in results["skipped_images"]}
    assert reasons["dog/5_sgid_1.png"] == "made from unreadable training image dog/5.png"
    assert reasons["cat/3.png"].startswith("corrupt or truncated image")
    assert "dog/5.png" in results["protocol"]["left out (toy)"]


def test_a_class_whose_every_training_image_is_unreadable_is_left_out_like_an_empty_one(tmp_path) -> None:
    train = write_folder(tmp_path / "train", {"cat": 3, "dog": 3, "owl": 2})
    generated = write_generated(tmp_path / "run", train, per_image=1)
    test = write_folder(tmp_path / "test", {"cat": 2, "dog": 2}, offset=100)
    for image in (train / "owl").iterdir():
        image.write_bytes(b"not a picture")
    data = load_folder_dataset(train, test, generated=[str(generated)])
    assert data.classes == ("cat", "dog") and len(data.generated) == 6
    assert any("2 unreadable image(s) left out: owl/0.png" in n for n in data.notes)
    assert any("1 class folder(s) without images left out: owl" in n for n in data.notes)
    lost = [s for s in data.skipped if s["folder"] == "--generated"]
    assert [s["reason"] for s in lost] == [
        "made from unreadable training image owl/0.png",
        "made from unreadable training image owl/1.png",
    ]
    # a test folder with images of that class: says why it is not a class, instead of "not in the training set"
    write_folder(test, {"owl": 1})
    with pytest.raises(
        SgidError, match=r"--test .* has images of 1 class\(es\) whose every --train image is unreadable \(owl\)"
    ):
        load_folder_dataset(train, test)


@pytest.mark.parametrize("side", [16, 128])  # ~1 KB files: checked in this thread; ~49 KB: in threads
def test_the_decode_check_names_exactly_the_broken_images_in_order(tmp_path, side: int) -> None:
    from sgid.evaluate.data import THREADED_CHECK_BYTES, unreadable

    rng = np.random.default_rng(side)
    paths = []
    for i in range(150):
        path = tmp_path / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    assert (paths[0].stat().st_size >= THREADED_CHECK_BYTES) == (side == 128)
    broken = {3: b"", 70: b"GIF89a", 149: paths[149].read_bytes()[:200]}
    for i, data in broken.items():
        paths[i].write_bytes(data)
    found = unreadable(paths)
    assert list(found) == [paths[i] for i in sorted(broken)]
    assert found[paths[3]] == "empty file (0 bytes)" and "truncated" in found[paths[149]]


def test_images_left_out_are_said_before_a_check_they_explain(toy, capsys) -> None:
    _truncate(toy["train"] / "dog" / "5.png")  # dog: 5 readable training images
    assert main(_args(toy, "--shots", "6", quiet=False)) == 2
    lines = capsys.readouterr().err.splitlines()
    left_out = next(i for i, line in enumerate(lines) if "1 unreadable image(s) left out: dog/5.png" in line)
    assert lines[-1].startswith("sgid: error:") and "fewer than --shots 6" in lines[-1] and left_out < len(lines) - 1


def test_a_hand_edited_run_record_is_one_line_on_resume(toy, capsys) -> None:
    """Found by a hostile-input run: wrong types in runs/…/seed0.json were tracebacks on resume, and an
    accuracy of 5 became a table cell of 500%."""
    args = _args(toy, "--methods", "baseline", "--seeds", "1")
    assert main(args) == 0
    record = next((toy["out"] / "runs").rglob("seed0.json"))
    good = json.loads(record.read_text())
    for edit, why in (
        ({"accuracy": None}, "accuracy is not a fraction in [0, 1]"),
        ({"accuracy": 5}, "accuracy is not a fraction in [0, 1]"),
        ({"accuracy": "0.5"}, "accuracy is not a fraction in [0, 1]"),
        ({"per_class": [1]}, "per_class is not class -> fraction in [0, 1] or null"),
        ({"seed": "0"}, "seed is not a whole number"),
        ({"details": "x"}, "details is not an object"),
        ({"extra": 1}, "unknown field extra"),
    ):
        record.write_text(json.dumps({**good, **edit}))
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is not a run record sgid evaluate wrote ({why}); delete it" in err, err
    record.write_text(json.dumps([good]))
    assert main(args) == 2 and "(not a JSON object)" in capsys.readouterr().err
    record.write_text(json.dumps(good))
    assert main(args) == 0
