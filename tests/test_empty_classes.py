"""Empty class folders are left out by every command alike, with a warning and a record; a metrics reference
that shares no class with the run is refused instead of giving an FID of unrelated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST, make_image_folder
from evaluate_helpers import write_folder, write_generated
from sgid.cli import main
from sgid.dataset import EMPTY_CLASS, scan
from sgid.pipeline import augment


def test_scan_leaves_empty_class_folders_out_and_lists_them(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "in", {"cat": 2, "dog": 1})
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image")
    listing = scan(root)
    assert listing.classes == ("cat", "dog") and set(listing.labels) == {"cat", "dog"}
    assert listing.empty == ("empty", "notes")
    assert ("empty/", EMPTY_CLASS) in listing.skipped and ("notes/", EMPTY_CLASS) in listing.skipped
    assert any(path == "notes/readme.txt" for path, _ in listing.skipped)


def test_augment_warns_and_records_an_empty_class(tmp_path: Path, cache_dir: Path, capsys) -> None:
    root = make_image_folder(tmp_path / "in", {"cat": 1})
    (root / "dog").mkdir()
    summary = augment(root, tmp_path / "out", cache_dir=cache_dir, **{**FAST, "steps": 2})
    err = capsys.readouterr().err
    assert "sgid: warning: " in err and "1 class folder(s) without images left out: dog" in err
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert {"source": "dog/", "k": None, "reason": EMPTY_CLASS} in errors
    assert not (tmp_path / "out" / "dog").exists()
    # the summary says it was skipped and why, and counts no failure (the rerun with nothing to do alike)
    again = augment(root, tmp_path / "out", cache_dir=cache_dir, **{**FAST, "steps": 2})
    for made in (summary, again):
        assert made.failed == 0 and made.empty_classes == ("dog",)
        assert "already done and 1 class folder(s) without images (dog), failed 0 " in made.line()


def test_evaluate_leaves_an_empty_class_out_of_the_head_and_says_so(tmp_path: Path, capsys) -> None:
    train = write_folder(tmp_path / "toy" / "train", {"cat": 4, "dog": 4})
    test = write_folder(tmp_path / "toy" / "test", {"cat": 2, "dog": 2}, offset=100)
    (train / "zebra").mkdir()
    (test / "zebra").mkdir()
    out = tmp_path / "out"
    args = ["evaluate", "--train", str(train), "--test", str(test), "--out", str(out), "--methods", "baseline"]
    fast = ["--backbone", "small_cnn", "--epochs", "1", "--seeds", "1", "--threads", "1", "--quiet"]
    assert main([*args, *fast]) == 0
    assert "zebra" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"][0]["per_class"]) == {"cat", "dog"}  # a 2-way head, not 3
    assert "zebra" in results["protocol"]["left out (toy)"]
    assert "left out (toy):" in (out / "results.md").read_text()


def test_a_test_class_without_training_images_is_an_error(tmp_path: Path, capsys) -> None:
    train = write_folder(tmp_path / "toy" / "train", {"cat": 4})
    (train / "dog").mkdir()
    test = write_folder(tmp_path / "toy" / "test", {"cat": 2, "dog": 2}, offset=100)
    args = ["evaluate", "--train", str(train), "--test", str(test), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2
    assert "not in the training set (a class needs training images): dog" in capsys.readouterr().err


def test_metrics_refuses_a_reference_that_shares_no_class(tmp_path: Path, capsys) -> None:
    train = write_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    run = write_generated(tmp_path / "run", train)
    other = write_folder(tmp_path / "other", {"car": 2, "ship": 2})
    assert main(["metrics", str(run), "--reference", str(other), "--out", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shares no class with the run (run: cat, dog; reference: car, ship)" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_metrics_warns_about_classes_the_reference_lacks(augmented_run: Path, tmp_path: Path, capsys) -> None:
    reference = make_image_folder(tmp_path / "ref", {"cat": 3})
    args = ["metrics", str(augmented_run), "--reference", str(reference), "--out", str(tmp_path / "m"), "--quiet"]
    assert main(args) == 0
    assert "has no images of 1 of the run's classes (golden_retriever)" in capsys.readouterr().err
