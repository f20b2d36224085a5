"""``sgid evaluate --generated sgid=A text2img=B``: several generated runs in one table, each its own method,
paired on the same seeds and subsets, with the provenance of every generated folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from scipy import stats

from evaluate_helpers import write_folder, write_generated
from sgid.cli import main
from sgid.errors import SgidError
from sgid.evaluate.generated import parse_generated
from sgid.evaluate.methods import parse_method

FAST = ["--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--quiet"]
NAMES = ["random_erasing", "cutmix", "randaugment", "moex"]


def _run_json(folder: Path, *, method: str, models: str, identity: str) -> None:
    """Make a hand-made generated folder look like a real augment run (its run.json)."""
    info = json.loads((folder / "run.json").read_text())
    names = (
        {"captioner": "tiny:blip", "scorer": "tiny:clip", "generator": "tiny:sd"}
        if models == "tiny"
        else {
            "captioner": "Salesforce/blip-image-captioning-base",
            "scorer": "openai/clip-vit-base-patch32",
            "generator": "runwayml/stable-diffusion-v1-5",
        }
    )
    info["config"].update(method=method, models=models)
    info.update(models=names, identity_sha256=identity)
    (folder / "run.json").write_text(json.dumps(info))


@pytest.fixture
def two_runs(tmp_path: Path) -> dict[str, Path]:
    train = write_folder(tmp_path / "toy" / "train", {"cat": 6, "dog": 6})
    test = write_folder(tmp_path / "toy" / "test", {"cat": 4, "dog": 4}, offset=100)
    sgid = write_generated(tmp_path / "runs" / "sgid", train, per_image=2)
    t2i = write_generated(tmp_path / "runs" / "t2i", train, per_image=1)
    _run_json(sgid, method="sgid", models="default", identity="a" * 64)
    _run_json(t2i, method="text2img", models="tiny", identity="b" * 64)
    return {"train": train, "test": test, "sgid": sgid, "t2i": t2i, "out": tmp_path / "out"}


def _evaluate(d: dict[str, Path], *extra: str, out: Path | None = None) -> int:
    return main(
        [
            "evaluate",
            "--train",
            str(d["train"]),
            "--test",
            str(d["test"]),
            "--out",
            str(out or d["out"]),
            *FAST,
            *extra,
        ]
    )


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_one_evaluate_makes_a_row_per_generated_run_and_their_combinations_paired(two_runs) -> None:
    generated = ["--generated", f"sgid={two_runs['sgid']}", f"text2img={two_runs['t2i']}"]
    methods = "baseline,sgid,text2img,sgid+randaugment,text2img+randaugment"
    assert _evaluate(two_runs, *generated, "--methods", methods, "--shots", "3", "--seeds", "3") == 0
    results = _results(two_runs["out"])
    variants = ["baseline", "sgid@add", "text2img@add", "sgid+randaugment@add", "text2img+randaugment@add"]
    runs = {(r["variant"], r["seed"]): r for r in results["runs"]}
    assert set(runs) == {(v, s) for v in variants for s in range(3)}
    for seed in range(3):
        # the same 3-shot subset for every method at a seed; each method trains on its own run's images only
        assert {runs[(v, seed)]["details"]["train_real"] for v in variants} == {6}
        assert runs[("sgid@add", seed)]["details"]["plan_generated"] == 2 * 6
        assert runs[("text2img@add", seed)]["details"]["plan_generated"] == 6
        assert runs[("text2img+randaugment@add", seed)]["details"]["perturbations"] == ["randaugment"]
    for row in results["summary"]:
        if row["dataset"] == "toy" and row["variant"] != "baseline":
            method = [runs[(row["variant"], s)]["accuracy"] for s in range(3)]
            base = [runs[("baseline", s)]["accuracy"] for s in range(3)]
            expected = stats.ttest_rel(method, base).pvalue
            assert row["p_value"] is None if expected != expected else row["p_value"] == pytest.approx(expected)
    # provenance of every generated method
    provenance = {p["name"]: p for p in results["generated"]}
    assert set(provenance) == {"sgid", "text2img"}
    assert provenance["sgid"]["folder"] == str(two_runs["sgid"].resolve())
    assert provenance["sgid"]["identity"] == "a" * 64 and provenance["sgid"]["method"] == "sgid"
    assert provenance["sgid"]["models"]["generator"] == "runwayml/stable-diffusion-v1-5"
    assert provenance["sgid"]["tiny"] is False and provenance["text2img"]["tiny"] is True
    assert provenance["text2img"]["images"] == 12 and provenance["sgid"]["images"] == 24
    table = (two_runs["out"] / "results.md").read_text()
    for label in ("sgid [add]", "text2img [add]", "sgid+randaugment [add]", "text2img+randaugment [add]"):
        assert f"| {label} |" in table
    assert "## Generated data" in table and str(two_runs["t2i"].resolve()) in table
    warning = next(line for line in table.splitlines() if "Warning" in line)
    assert "`text2img`" in warning and "tiny random-weight models" in warning and "`sgid`" not in warning
    assert table.index("Warning") < table.index("| Method |")  # seen before the numbers


def test_a_bare_folder_keeps_the_name_generated_and_the_default_methods_use_every_run(two_runs) -> None:
    generated = ["--generated", str(two_runs["sgid"]), f"text2img={two_runs['t2i']}"]
    assert _evaluate(two_runs, *generated, "--methods", "generated,text2img", "--seeds", "1") == 0
    assert {r["variant"] for r in _results(two_runs["out"])["runs"]} == {"baseline", "generated@add", "text2img@add"}
    from sgid.cli import build_parser
    from sgid.commands.evaluate import _config

    args = build_parser().parse_args(["evaluate", "--train", "t", "--test", "t", "--out", "o", *generated])
    assert _config(args).methods[-2:] == ("generated", "text2img")


def test_adding_a_second_run_later_reuses_the_first_runs_results(two_runs) -> None:
    assert _evaluate(two_runs, "--generated", f"sgid={two_runs['sgid']}", "--methods", "sgid", "--seeds", "2") == 0
    stamps = {p: p.stat().st_mtime_ns for p in (two_runs["out"] / "runs").rglob("seed*.json")}
    both = ["--generated", f"sgid={two_runs['sgid']}", f"text2img={two_runs['t2i']}"]
    assert _evaluate(two_runs, *both, "--methods", "sgid,text2img", "--seeds", "2") == 0
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert {r["variant"] for r in _results(two_runs["out"])["runs"]} == {"baseline", "sgid@add", "text2img@add"}


def test_a_run_regenerated_with_other_settings_is_not_mistaken_for_the_old_one(two_runs, capsys) -> None:
    generated = ["--generated", f"sgid={two_runs['sgid']}", "--methods", "sgid", "--seeds", "1"]
    assert _evaluate(two_runs, *generated) == 0
    _run_json(two_runs["sgid"], method="sgid", models="default", identity="c" * 64)  # same files, new settings
    capsys.readouterr()
    assert _evaluate(two_runs, *generated) == 2
    assert "made from different data" in capsys.readouterr().err


@pytest.mark.parametrize(
    "generated, methods, message",
    [
        (["randaugment={sgid}"], "randaugment", "--generated name 'randaugment' is already a method"),
        (["baseline={sgid}"], "baseline", "--generated name 'baseline' is already a method"),
        (["sgid={sgid}", "again={sgid}"], "sgid", "is given twice"),
        (["sgid={sgid}", "text2img={t2i}"], "sgid+text2img", "combines two generated sets"),
        (["sgid={sgid}"], "sgdi", "did you mean 'sgid'"),
        (["sgid={sgid}"], "text2img", "unknown method component 'text2img'"),
        (["sgid="], "sgid", "no folder after '='"),
        (["sgid={sgid}"], "generated", "methods with 'generated' need --generated DIR.*sets: sgid"),
    ],
)
def test_bad_generated_names_are_one_line_errors_before_training(two_runs, capsys, generated, methods, message):
    specs = [g.format(sgid=two_runs["sgid"], t2i=two_runs["t2i"]) for g in generated]
    assert _evaluate(two_runs, "--generated", *specs, "--methods", methods) == 2
    err = capsys.readouterr().err
    assert err.startswith("sgid: error: ") and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not (two_runs["out"] / "runs").exists()


def test_generated_specs_parse_names_and_bare_folders() -> None:
    assert parse_generated(["sgid=runs/a", "runs/b", Path("c=d")], NAMES) == [
        ("sgid", Path("runs/a")),
        ("generated", Path("runs/b")),
        ("generated", Path("c=d")),  # a Path is always a folder
    ]
    assert parse_generated(["./x=y"], NAMES) == [("generated", Path("./x=y"))]  # not a name: a folder
    assert parse_generated({"t2i": "runs/t"}, NAMES) == [("t2i", Path("runs/t"))]
    method = parse_method("text2img+randaugment", NAMES, ["sgid", "text2img"])
    assert method.source == "text2img" and method.perturbations == ("randaugment",) and method.generated
    with pytest.raises(SgidError, match="did you mean 'randaugment'"):
        parse_method("randaugmnet", NAMES)


def test_python_api_takes_a_mapping_of_named_runs(two_runs) -> None:
    from sgid.evaluate import EvalConfig, evaluate, load_folder_dataset

    data = load_folder_dataset(two_runs["train"], two_runs["test"], generated={"sgid": two_runs["sgid"]})
    assert data.generated_sets() == ["sgid"] and data.runs[0].method == "sgid"
    config = EvalConfig(methods=("sgid",), seeds=1, epochs=1, batch_size=8, threads=1, quiet=True)
    result = evaluate(data, config, two_runs["out"])
    assert [s.label for s in result.summary if s.dataset == "toy"] == ["baseline", "sgid [add]"]


@pytest.mark.slow
def test_a_tiny_model_augment_run_is_flagged_in_results_md(augmented_run: Path, tmp_path: Path) -> None:
    source = augmented_run.parent / "input"
    test = shutil.copytree(source, tmp_path / "test")  # evaluate refuses a test folder that is trained on
    args = ["evaluate", "--train", str(source), "--test", str(test), "--out", str(tmp_path / "out"), *FAST]
    assert main([*args, "--generated", f"sgid={augmented_run}", "--methods", "sgid", "--seeds", "1"]) == 0
    (provenance,) = _results(tmp_path / "out")["generated"]
    assert provenance["tiny"] is True and provenance["method"] == "sgid" and provenance["identity"]
    assert (
        "Warning: `sgid` was generated with the tiny random-weight models"
        in (tmp_path / "out" / "results.md").read_text()
    )


def _as_method(folder: Path, method: str, variant: str) -> None:
    """Rewrite a hand-made folder's rows and run.json as made by ``method`` in ``variant``."""
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        if row["method"] != "original":
            row.update(method=method, variant=variant)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = json.loads((folder / "run.json").read_text())
    info["config"]["method"] = method
    info["variant"] = variant
    (folder / "run.json").write_text(json.dumps(info))


def test_rows_made_by_a_stand_in_say_so(two_runs) -> None:
    """Issue 10, point 4: a fallback (templates, borrowed captions) is never presented as the paper's baseline."""
    _as_method(two_runs["t2i"], "text2img", "templates")
    _as_method(two_runs["sgid"], "diverse_caption", "summarised")
    generated = ["--generated", f"text2img={two_runs['t2i']}", f"dc={two_runs['sgid']}"]
    assert _evaluate(two_runs, *generated, "--methods", "text2img,text2img+cutmix,dc", "--seeds", "1") == 0
    labels = {s["variant"]: s["label"] for s in _results(two_runs["out"])["summary"]}
    assert labels["text2img@add"] == "text2img (templates) [add]"
    assert labels["text2img+cutmix@add"] == "text2img+cutmix (templates) [add]"
    assert labels["dc@add"] == "dc [add]"  # the paper's variant: no remark
    table = (two_runs["out"] / "results.md").read_text()
    assert "| text2img (templates) [add] |" in table and "| text2img (templates) |" in table  # row, provenance
    bare = two_runs["out"].parent / "bare"
    assert (
        _evaluate(two_runs, "--generated", str(two_runs["t2i"]), "--seeds", "1", "--methods", "generated", out=bare)
        == 0
    )
    assert "| generated (text2img: templates) [add] |" in (bare / "results.md").read_text()
