"""``sgid filter`` and ``sgid metrics`` from the command line, end to end with the tiny models (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgid.cli import build_parser, main
from test_filters_support import make_run, read_jsonl

ALL_CLIP_FILTERS = "label,prompt,original,threshold,best_of_k,realfake"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path, {"cat": 4, "dog": 4}, k=2)


def test_filter_then_filter_again_then_metrics_reuses_every_feature(
    run: Path,
    tmp_path: Path,
    tiny,  # type: ignore[no-untyped-def]
    cache_dir: Path,
    capsys,
) -> None:
    args = [
        "filter",
        str(run),
        "--filters",
        ALL_CLIP_FILTERS,
        "--threshold",
        "-1",
        "--folds",
        "3",
        "--out",
        str(tmp_path / "f1"),
        "--cache-dir",
        str(cache_dir),
        "--quiet",
    ]
    assert main(args) == 0
    rows = read_jsonl(tmp_path / "f1" / "decisions.jsonl")
    assert len(rows) == 16 and all(r["decision"] in ("keep", "reject") and r["reason"] for r in rows)
    assert all(f"{name}_score" in rows[0] for name in ALL_CLIP_FILTERS.split(","))
    first = json.loads((tmp_path / "f1" / "report.json").read_text())["settings"]
    assert first["scorer"].startswith("tiny:clip") and first["tiny"]  # the run's own CLIP, with the warning
    assert main([*args[:-4], str(tmp_path / "f2"), *args[-3:]]) == 0
    second = json.loads((tmp_path / "f2" / "report.json").read_text())["settings"]["features"]
    assert second == {"computed": 0, "reused": 16 + 8}  # generated + real images, all from the cache
    assert read_jsonl(tmp_path / "f2" / "decisions.jsonl") == rows  # deterministic
    assert main(["metrics", str(run), "--out", str(tmp_path / "m"), "--cache-dir", str(cache_dir), "-q"]) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["features"]["computed"] == {"clip": 0}
    assert metrics["overall"]["generated"] == 16 and metrics["overall"]["reference"] == 8
    assert set(metrics["per_class"]) == {"cat", "dog"}
    assert metrics["overall"]["fid"] is not None and metrics["overall"]["similarity"]["n"] == 8
    assert (tmp_path / "m" / "plots" / "similarity.png").stat().st_size > 0
    assert "| **all** | 16 | 8 |" in (tmp_path / "m" / "metrics.md").read_text()
    assert len(read_jsonl(tmp_path / "m" / "images.jsonl")) == 16
    assert capsys.readouterr().err.count("sgid: error") == 0


def test_metrics_of_a_filtered_folder(run: Path, tmp_path: Path, tiny, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert (
        main(
            [
                "filter",
                str(run),
                "--filters",
                "original",
                "--out",
                str(tmp_path / "f"),
                "--cache-dir",
                str(cache_dir),
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "metrics",
                str(tmp_path / "f"),
                "--out",
                str(tmp_path / "m"),
                "--no-plots",
                "--cache-dir",
                str(cache_dir),
                "-q",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    kept = sum(r["decision"] == "keep" for r in read_jsonl(tmp_path / "f" / "decisions.jsonl"))
    assert metrics["overall"]["generated"] == kept and not (tmp_path / "m" / "plots").exists()


BAD_FILTER_ARGS = [
    (["filter", "{tmp}/nope", "--filters", "label", "--out", "{tmp}/o"], "run folder not found"),
    (["filter", "{tmp}", "--filters", "label", "--out", "{tmp}/o"], "has no metadata.jsonl"),
    (["filter", "{run}", "--filters", "label,nope", "--out", "{tmp}/o"], "unknown filter 'nope'"),
    (["filter", "{run}", "--filters", "label,label", "--out", "{tmp}/o"], "names label twice"),
    (["filter", "{run}", "--filters", ",", "--out", "{tmp}/o"], "--filters is empty"),
    (["filter", "{run}", "--filters", "threshold", "--out", "{tmp}/o"], "needs --threshold"),
    (["filter", "{run}", "--filters", "threshold", "--threshold", "1.5", "--out", "{tmp}/o"], "[-1, 1]"),
    (["filter", "{run}", "--filters", "threshold", "--threshold", "x", "--out", "{tmp}/o"], "invalid float"),
    (["filter", "{run}", "--filters", "best_of_k", "--keep", "0", "--out", "{tmp}/o"], "keep at least 1"),
    (
        ["filter", "{run}", "--filters", "best_of_k", "--rank-by", "x", "--out", "{tmp}/o"],
        "unknown --rank-by",
    ),
    (["filter", "{run}", "--filters", "realfake", "--folds", "1", "--out", "{tmp}/o"], "at least 2 folds"),
    (["filter", "{run}", "--filters", "confidence", "--out", "{tmp}/o"], "needs --classifier"),
    (["filter", "{run}", "--filters", "label", "--out", "{run}/o"], "inside the run folder"),
    (
        ["filter", "{run}", "--filters", "original", "--source-dir", "{tmp}/gone", "--out", "{tmp}/o"],
        "--source-dir",
    ),
    (["filter", "{run}", "--filters", "label"], "required: --out"),
    (["metrics", "{tmp}/nope", "--out", "{tmp}/o"], "run folder not found"),
    (["metrics", "{run}", "--features", "inception", "--out", "{tmp}/o"], "needs Inception-v3 weights"),
    (["metrics", "{run}", "--features", "pixels", "--out", "{tmp}/o"], "unknown feature extractor 'pixels'"),
    (["metrics", "{run}", "--reference", "{tmp}/none", "--out", "{tmp}/o"], "input folder not found"),
    (["metrics", "{run}", "--out", "{run}/metrics"], "inside the run folder"),
    (["metrics", "{run}", "--kid-subset-size", "1", "--out", "{tmp}/o"], "--kid-subset-size"),
]


@pytest.mark.parametrize("argv, message", BAD_FILTER_ARGS)
def test_bad_input_is_one_line_exit_2_before_any_model(
    argv: list[str],
    message: str,
    run: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    forbid_model_loading,
    capsys,
) -> None:
    args = [a.format(tmp=tmp_path, run=run) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sgid: error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    "problem, message",
    [
        ("not json", "line 2: not JSON"),
        ("missing image", "do not exist, e.g. cat/0_sgid_1.png"),
        ("escaping path", "must be a relative path inside the folder"),
        ("moved sources", "is gone; pass --source-dir where they are now"),
        ("changed source", "differs from the one the run augmented"),
    ],
)
def test_a_broken_run_folder_is_one_line_exit_2(
    problem: str,
    message: str,
    run: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    forbid_model_loading,
    capsys,
) -> None:
    manifest = run / "metadata.jsonl"
    lines = manifest.read_text().splitlines()
    if problem == "not json":
        lines[1] = "{oops"
    elif problem == "missing image":
        (run / "cat" / "0_sgid_1.png").unlink()
    elif problem == "escaping path":
        lines[0] = json.dumps(dict(json.loads(lines[0]), file_name="../x.png"))
    elif problem == "moved sources":
        (tmp_path / "input").rename(tmp_path / "elsewhere")
    elif problem == "changed source":
        (tmp_path / "input" / "cat" / "0.png").write_bytes((tmp_path / "input" / "cat" / "1.png").read_bytes())
    manifest.write_text("\n".join(lines) + "\n")
    assert main(["filter", str(run), "--filters", "original", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_filter_help_lists_every_filter_and_every_rank_by_choice() -> None:
    from sgid.commands.filter import FILTER_NAMES, RANK_BY_NAMES
    from sgid.filters import FILTERS

    assert sorted(FILTER_NAMES.split(", ")) == sorted(FILTERS.names())
    assert sorted(RANK_BY_NAMES.split(", ")) == sorted(set(FILTERS.names()) - {"best_of_k"})
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    text = " ".join(commands["filter"].format_help().split())
    assert f"best_of_k: the filter whose score ranks them: {RANK_BY_NAMES} [default: original]" in text


def test_a_setting_no_chosen_filter_reads_is_warned_about(
    run: Path, tmp_path: Path, tiny, cache_dir: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    common = ["--cache-dir", str(cache_dir), "--quiet"]
    args = ["filter", str(run), "--filters", "label", "--threshold", "0.5", "--seed", "3", "--rank-by", "label"]
    assert main([*args, "--out", str(tmp_path / "f1"), *common]) == 0
    err = capsys.readouterr().err
    assert "sgid: warning: --threshold is read by the threshold filter only; it is ignored with --filters label" in err
    assert "--seed is read by the realfake filter only" in err and "--rank-by is read by the best_of_k filter" in err
    assert err.count("sgid: warning: --") == 3
    # best_of_k reads its ranker's settings: --label-template ranks by the label filter here, so no warning
    args = ["filter", str(run), "--filters", "best_of_k", "--rank-by", "label", "--label-template", "a {label}"]
    assert main([*args, "--keep", "2", "--out", str(tmp_path / "f2"), *common]) == 0
    assert "is read by" not in capsys.readouterr().err


def test_hand_edited_runs_are_one_line_errors_not_tracebacks(
    run: Path, tmp_path: Path, cache_dir: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Found by a hostile-input run: a NaN in metadata.jsonl (Python's reader takes it, the writer of the kept
    rows did not) and a run.json whose CLIP model is not a name were tracebacks."""
    manifest = run / "metadata.jsonl"
    lines = manifest.read_text().splitlines()
    first = json.loads(lines[0])
    first["noise_rate"] = 0.5
    lines[0] = json.dumps(first).replace('"noise_rate": 0.5', '"noise_rate": NaN')
    manifest.write_text("\n".join(lines) + "\n")
    for command in (["filter", "--filters", "threshold", "--threshold", "-1"], ["metrics"]):
        code = main(
            [command[0], str(run), *command[1:], "--out", str(tmp_path / command[0]), "--cache-dir", str(cache_dir)]
        )
        err = capsys.readouterr().err
        assert code == 2 and err == f"sgid: error: {manifest}, line 1: not JSON (NaN is not a JSON number)\n"
    manifest.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    info = json.loads((run / "run.json").read_text())
    info["models"] = {**info.get("models", {}), "scorer": 5}
    (run / "run.json").write_text(json.dumps(info))
    assert main(["metrics", str(run), "--out", str(tmp_path / "m"), "--cache-dir", str(cache_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names its CLIP model 5 (models.scorer), not a model name" in err


def test_a_label_template_is_read_like_augment_reads_it(run: Path, tmp_path: Path, tiny, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Only {label} is replaced: other braces are text (str.format made '{' or '{0}' a traceback)."""
    args = ["filter", str(run), "--filters", "label", "--label-template", "a {label} {0} {x} {", "-q"]
    assert main([*args, "--out", str(tmp_path / "f"), "--cache-dir", str(cache_dir)]) == 0
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    assert report["settings"]["options"]["label_template"] == "a {label} {0} {x} {"
