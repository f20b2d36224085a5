"""What ``sgid filter`` writes: a decision for every generated image, the report, and a dataset of the kept
images that loads as an imagefolder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sgid.errors import SgidError
from sgid.filters import FilterOptions, filter_run
from test_filters_support import FakeImages, FakeModels, at_cosine, make_run, read_jsonl, unit

COSINES = [0.9, 0.3, 0.8, 0.7, 0.2, 0.6, 0.95, 0.5, 0.4, 0.85, 0.1, 0.75]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """2 classes x 3 sources x 2 augmentations, plus the originals."""
    return make_run(tmp_path, {"cat": 3, "dog": 3}, k=2, originals=True)


@pytest.fixture
def models() -> FakeModels:
    names = [f"{c}/{i}_sgid_{j}.png" for c in ("cat", "dog") for i in range(3) for j in range(2)]
    vectors = {name: at_cosine(s) for name, s in zip(names, COSINES, strict=True)}
    vectors.update({f"{c}/{i}.png": unit(1) for c in ("cat", "dog") for i in range(3)})
    return FakeModels(FakeImages(vectors))


def test_decisions_cover_every_generated_image_with_scores_and_reasons(
    run: Path, models: FakeModels, tmp_path: Path
) -> None:
    summary = filter_run(
        run,
        tmp_path / "out",
        "original,threshold",
        options=FilterOptions(threshold=0.5),
        loaded=models,
        quiet=True,
    )
    rows = read_jsonl(tmp_path / "out" / "decisions.jsonl")
    generated = [r["file_name"] for r in read_jsonl(run / "metadata.jsonl") if r["method"] != "original"]
    assert [r["file_name"] for r in rows] == generated  # originals are never judged
    for row in rows:
        assert set(row) >= {
            "file_name",
            "label",
            "original_score",
            "original_decision",
            "threshold_score",
            "threshold_decision",
            "decision",
            "reason",
        }
        assert row["decision"] in ("keep", "reject") and row["reason"]
        assert row["original_score"] == pytest.approx(row["threshold_score"])
    kept = [r["file_name"] for r in rows if r["decision"] == "keep"]
    # cat mean 0.5833 keeps 0.9, 0.8, 0.7, 0.6 (not 0.3, 0.2); dog mean 0.5917 keeps 0.95, 0.85, 0.75
    assert kept == [
        "cat/0_sgid_0.png",
        "cat/1_sgid_0.png",
        "cat/1_sgid_1.png",
        "cat/2_sgid_1.png",
        "dog/0_sgid_0.png",
        "dog/1_sgid_1.png",
        "dog/2_sgid_1.png",
    ]
    assert summary.kept == 7 and summary.generated == 12
    rejected = {r["file_name"]: r["reason"] for r in rows if r["decision"] == "reject"}
    assert rejected["cat/0_sgid_1.png"] == "original: similarity to the source 0.3000 < cat mean 0.5833"
    assert all(r["threshold_decision"] is None for r in rows if r["decision"] == "reject")


def test_the_filtered_folder_holds_kept_images_and_originals_as_hard_links(
    run: Path, models: FakeModels, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    filter_run(run, out, "original", loaded=models, quiet=True)
    manifest = read_jsonl(out / "metadata.jsonl")
    source_rows = {r["file_name"]: r for r in read_jsonl(run / "metadata.jsonl")}
    kept = {r["file_name"] for r in read_jsonl(out / "decisions.jsonl") if r["decision"] == "keep"}
    originals = {name for name, r in source_rows.items() if r["method"] == "original"}
    assert {r["file_name"] for r in manifest} == kept | originals
    for row in manifest:
        assert row == source_rows[row["file_name"]]  # rows are copied unchanged
        assert os.path.samefile(out / row["file_name"], run / row["file_name"])  # hard links, not copies
    images = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert images == kept | originals
    info = json.loads((out / "run.json").read_text())
    assert info["filter"]["filters"] == ["original"] and "identity_sha256" not in info
    assert info["config"]["input_dir"] == str((run.parent / "input").resolve())  # still points at the real data


def test_the_filtered_folder_loads_with_torchvision_image_folder(run: Path, models: FakeModels, tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    out = tmp_path / "out"
    filter_run(run, out, "original", loaded=models, quiet=True)
    dataset = ImageFolder(str(out))
    assert dataset.classes == ["cat", "dog"]
    assert len(dataset) == len(read_jsonl(out / "metadata.jsonl"))


def test_the_filtered_folder_loads_as_a_hugging_face_imagefolder(run: Path, models: FakeModels, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    filter_run(run, out, "original", loaded=models, quiet=True)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    manifest = read_jsonl(out / "metadata.jsonl")
    assert loaded.num_rows == len(manifest)
    assert sorted(loaded["label"]) == sorted(r["label"] for r in manifest)
    assert loaded[0]["image"].size == (32, 32)


def test_report_counts_per_class_and_per_filter(run: Path, models: FakeModels, tmp_path: Path) -> None:
    filter_run(run, tmp_path / "out", "original,best_of_k", loaded=models, quiet=True)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["generated"] == 12 and report["totals"]["originals"] == 6
    cat = report["per_class"]["cat"]
    assert cat["generated"] == 6 and cat["kept"] + cat["rejected"] == 6
    assert cat["rejected_by"] == {
        "original": 2,
        "best_of_k": 1,
    }  # 1_sgid_0 and 1_sgid_1 both survive original
    assert [f["filter"] for f in report["filters"]] == ["original", "best_of_k"]
    assert report["filters"][0]["judged"] == 12 and report["filters"][1]["judged"] == 7
    assert report["filters"][0]["label_means"]["cat"] == pytest.approx(np.mean(COSINES[:6]))
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| cat | 6 | 2 | 1 | 3 | 50.0% |" in markdown


def test_rerunning_into_the_same_out_replaces_the_previous_result(
    run: Path, models: FakeModels, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    filter_run(run, out, "original", loaded=models, quiet=True)
    filter_run(run, out, "threshold", options=FilterOptions(threshold=0.85), loaded=models, quiet=True)
    kept = {r["file_name"] for r in read_jsonl(out / "metadata.jsonl") if r["method"] != "original"}
    assert kept == {"cat/0_sgid_0.png", "dog/0_sgid_0.png", "dog/1_sgid_1.png"}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*_sgid_*.png")} == kept
    assert not list(tmp_path.glob(".out.*"))  # no staging leftovers


def test_a_previous_output_holding_a_users_files_is_not_replaced(run: Path, models: FakeModels, tmp_path: Path) -> None:
    out = tmp_path / "out"
    filter_run(run, out, "original", loaded=models, quiet=True)
    (out / "notes.txt").write_text("keep me")
    (out / "cat" / "mine.png").write_bytes(b"a user's image")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(SgidError, match=r"files it did not write \(cat/mine.png, notes.txt\); replacing it would"):
        filter_run(run, out, "threshold", options=FilterOptions(threshold=0.85), loaded=models, quiet=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_class_with_nothing_left_is_reported(tmp_path: Path) -> None:
    run = make_run(tmp_path, {"cat": 1, "dog": 1}, k=1)
    vectors = {
        "cat/0.png": unit(1),
        "dog/0.png": unit(1),
        "cat/0_sgid_0.png": at_cosine(0.2),
        "dog/0_sgid_0.png": at_cosine(0.9),
    }
    filter_run(
        run,
        tmp_path / "out",
        "threshold",
        options=FilterOptions(threshold=0.5),
        loaded=FakeModels(FakeImages(vectors)),
        quiet=True,
    )
    assert "no image of cat is left" in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "cat").exists()


@pytest.mark.parametrize(
    "where, message",
    [
        (lambda run: run / "filtered", "inside the run folder"),
        (lambda run: run, "inside the run folder"),
        (lambda run: run.parent, "contains the run folder"),
        (lambda run: run.parent / "input" / "x", "inside the real input folder"),
    ],
)
def test_out_may_not_overlap_the_data(run: Path, models: FakeModels, where, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SgidError, match=message):
        filter_run(run, where(run), "original", loaded=models, quiet=True)


def test_a_foreign_non_empty_out_is_refused(run: Path, models: FakeModels, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SgidError, match="holds no sgid filter output"):
        filter_run(run, tmp_path / "mine", "original", loaded=models, quiet=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_filtered_folder_is_a_valid_generated_input_of_sgid_evaluate(
    run: Path, models: FakeModels, tmp_path: Path
) -> None:
    data = pytest.importorskip("sgid.evaluate.data")
    out = tmp_path / "out"
    filter_run(run, out, "original", loaded=models, quiet=True)
    classes, train = data.read_image_folder(run.parent / "input")
    generated = data.read_generated(out, classes)
    kept = [r["file_name"] for r in read_jsonl(out / "decisions.jsonl") if r["decision"] == "keep"]
    assert sorted(ex.key.split(":", 1)[1] for ex in generated) == sorted(kept)
    assert all(ex.source_sha256 for ex in generated)  # provenance kept through the filter
    data.verify_sources(generated, train, (), out)  # every kept image still links to its real source, by content
    assert len(data.linked_generated(generated, train)) == len(kept)
