"""Both commands end to end on a real ``sgid augment --models tiny`` run (the session's ``augmented_run``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sgid.cli import main
from test_filters_support import read_jsonl

pytestmark = pytest.mark.slow

EVERY_FILTER = "realfake,label,prompt,original,threshold,best_of_k,confidence"


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    """A small CNN saved the way ``sgid evaluate --save-models`` saves it."""
    checkpoint = pytest.importorskip("sgid.evaluate.checkpoint")
    from sgid.evaluate.backbones import build_backbone

    model = build_backbone("small_cnn", 2, image_size=32, pretrained=False, arch={"width": 8})
    checkpoint.save_classifier(
        model,
        tmp_path / "classifier",
        backbone="small_cnn",
        classes=["cat", "golden_retriever"],
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    return tmp_path / "classifier"


def test_filter_with_every_filter_on_an_augment_run(
    augmented_run: Path, classifier: Path, tmp_path: Path, cache_dir: Path
) -> None:
    from torchvision.datasets import ImageFolder

    out = tmp_path / "filtered"
    args = [
        "filter",
        str(augmented_run),
        "--filters",
        EVERY_FILTER,
        "--threshold",
        "0.0",
        "--folds",
        "3",
        "--classifier",
        str(classifier),
        "--out",
        str(out),
        "--cache-dir",
        str(cache_dir),
        "-q",
    ]
    assert main(args) == 0
    generated = [r for r in read_jsonl(augmented_run / "metadata.jsonl") if r["method"] != "original"]
    rows = read_jsonl(out / "decisions.jsonl")
    assert [r["file_name"] for r in rows] == [r["file_name"] for r in generated] and len(rows) == 12
    for name in EVERY_FILTER.split(","):
        assert f"{name}_score" in rows[0] and f"{name}_decision" in rows[0]
    assert all(r["reason"] for r in rows)
    report = json.loads((out / "report.json").read_text())
    assert [f["filter"] for f in report["filters"]] == EVERY_FILTER.split(",")
    kept = [r["file_name"] for r in rows if r["decision"] == "keep"]
    assert report["totals"]["kept"] == len(kept)
    if kept:
        dataset = ImageFolder(str(out))
        assert len(dataset) == len(kept)


def test_metrics_on_an_augment_run(augmented_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "metrics"
    assert main(["metrics", str(augmented_run), "--out", str(out), "--cache-dir", str(cache_dir), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["generated"] == 12 and metrics["overall"]["reference"] == 6
    assert metrics["overall"]["sources"] == 6 and metrics["overall"]["diversity"]["n"] == 6
    assert set(metrics["per_class"]) == {"cat", "golden_retriever"}
    for per_class in metrics["per_class"].values():
        assert per_class["fid"] is not None and per_class["clip_score"]["n"] == 6
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "clip_score.png",
        "diversity.png",
        "fid.png",
        "kid.png",
        "similarity.png",
    ]


def test_metrics_with_inception_features_from_local_weights(
    augmented_run: Path, tmp_path: Path, cache_dir: Path
) -> None:
    import torch
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    torch.save(Inception3(init_weights=True).state_dict(), tmp_path / "inception_v3.pth")
    out = tmp_path / "metrics"
    assert (
        main(
            [
                "metrics",
                str(augmented_run),
                "--features",
                "inception",
                "--inception-weights",
                str(tmp_path / "inception_v3.pth"),
                "--out",
                str(out),
                "--cache-dir",
                str(cache_dir),
                "--no-plots",
                "-q",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["features"]["name"] == "inception" and metrics["features"]["dim"] == 2048
    assert metrics["features"]["identity"].startswith("inception-torchvision:")
    assert metrics["overall"]["fid"] is not None


def test_a_moved_dataset_is_found_with_source_dir(augmented_run: Path, tmp_path: Path, cache_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    shutil.copytree(augmented_run, run)
    info = json.loads((run / "run.json").read_text())
    moved = tmp_path / "moved-input"
    shutil.copytree(info["config"]["input_dir"], moved)
    info["config"]["input_dir"] = str(tmp_path / "gone")
    (run / "run.json").write_text(json.dumps(info))
    assert main(["filter", str(run), "--filters", "original", "--out", str(tmp_path / "f"), "-q"]) == 2
    assert "pass --source-dir" in capsys.readouterr().err
    assert (
        main(
            [
                "filter",
                str(run),
                "--filters",
                "original",
                "--source-dir",
                str(moved),
                "--out",
                str(tmp_path / "f"),
                "--cache-dir",
                str(cache_dir),
                "-q",
            ]
        )
        == 0
    )
    rows = read_jsonl(tmp_path / "f" / "decisions.jsonl")  # every image scored against its (moved) source
    assert len(rows) == 12 and all(isinstance(r["original_score"], float) for r in rows)
