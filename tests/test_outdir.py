"""Every command refuses an --out inside the data it reads (or a non-empty foreign folder), in one line, before
anything is written or any model loads: the next run would otherwise train on an extra class ``eval``."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluate_helpers import write_folder, write_generated
from sgid.cli import main
from sgid.errors import SgidError
from sgid.outdir import check_out_dir


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    train = write_folder(tmp_path / "toy" / "train", {"cat": 3, "dog": 3})
    test = write_folder(tmp_path / "toy" / "test", {"cat": 2, "dog": 2}, offset=100)
    run = write_generated(tmp_path / "runs" / "sgid", train, per_image=1)
    return {"train": train, "test": test, "run": run, "root": tmp_path}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], message: str) -> None:
    before = {p for p in Path(argv[argv.index("--out") + 1]).parent.rglob("*")}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sgid: error: --out ") and err.count("\n") == 1, err
    assert message in err, err
    after = {p for p in Path(argv[argv.index("--out") + 1]).parent.rglob("*")}
    assert after == before  # nothing written


EVALUATE = ["--backbone", "small_cnn", "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.mark.parametrize(
    "inside, what",
    [
        ("train", "the --train folder"),
        ("test", "the --test folder"),
        ("run", "the --generated sgid folder"),
    ],
)
def test_evaluate_refuses_an_out_inside_its_data(data, capsys, inside, what) -> None:
    out = data[inside] / "eval"
    args = ["evaluate", "--train", str(data["train"]), "--test", str(data["test"])]
    args += ["--generated", f"sgid={data['run']}", "--out", str(out), *EVALUATE]
    _refused(args, capsys, f"is inside {what}")
    if inside == "run":  # a bare folder is the method 'generated'
        args[args.index(f"sgid={data['run']}")] = str(data["run"])
        _refused(args, capsys, "is inside the --generated folder ")


def test_evaluate_refuses_an_out_that_contains_its_data(data, capsys) -> None:
    args = ["evaluate", "--train", str(data["train"]), "--test", str(data["test"]), "--out", str(data["root"] / "toy")]
    assert main([*args, *EVALUATE]) == 2
    assert "contains the --train folder" in capsys.readouterr().err


def test_metrics_refuses_an_out_inside_the_run_the_reference_or_the_real_images(data, capsys) -> None:
    for folder, what in ((data["run"], "the run folder"), (data["test"], "the reference folder")):
        args = ["metrics", str(data["run"]), "--reference", str(data["test"]), "--out", str(folder / "m")]
        _refused(args, capsys, f"is inside {what}")
    args = ["metrics", str(data["run"]), "--reference", str(data["test"]), "--out", str(data["train"] / "m")]
    _refused(args, capsys, "is inside the real input folder")


def test_metrics_refuses_a_non_empty_foreign_folder(data, capsys) -> None:
    foreign = data["root"] / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    args = ["metrics", str(data["run"]), "--reference", str(data["test"]), "--out", str(foreign)]
    _refused(args, capsys, "is not empty and holds no sgid metrics output")


def test_learn_concepts_refuses_an_out_inside_its_input(data, capsys) -> None:
    args = ["learn-concepts", str(data["train"]), "--out", str(data["train"] / "concepts"), "--models", "tiny"]
    _refused(args, capsys, "is inside the input folder")


def test_demo_refuses_a_non_empty_foreign_folder_and_an_sgid_output(data, capsys) -> None:
    _refused(["demo", "--out", str(data["train"]), "--quiet"], capsys, "holds no sgid demo output")
    _refused(["demo", "--out", str(data["run"] / "demo"), "--quiet"], capsys, "an sgid output folder (run.json)")


def test_augment_and_filter_use_the_same_check(data, capsys) -> None:
    _refused(["augment", str(data["train"]), "--out", str(data["train"] / "aug")], capsys, "is inside the input folder")
    args = ["filter", str(data["run"]), "--filters", "label", "--out", str(data["train"] / "kept")]
    _refused(args, capsys, "is inside the real input folder")


def test_the_shared_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    reads = [("the input folder", data), ("an unused folder", None)]
    check_out_dir(tmp_path / "out", reads, command="x")  # new folder: fine
    with pytest.raises(SgidError, match="is inside the input folder"):
        check_out_dir(data / "cat" / "out", reads, command="x")
    with pytest.raises(SgidError, match="is inside the input folder"):
        check_out_dir(data, reads, command="x")
    with pytest.raises(SgidError, match="contains the input folder"):
        check_out_dir(tmp_path, reads, command="x")
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(SgidError, match="is inside the input folder"):
        check_out_dir(tmp_path / "link" / "out", reads, command="x")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sgid-lock").touch()
    check_out_dir(out, reads, command="x", owned=lambda p: False)  # only a lock file: empty
    (out / "mine.txt").touch()
    with pytest.raises(SgidError, match="not empty and holds no sgid x output"):
        check_out_dir(out, reads, command="x", owned=lambda p: False)
    check_out_dir(out, reads, command="x", owned=lambda p: True)  # its own earlier output
    (tmp_path / "file").touch()
    with pytest.raises(SgidError, match="exists and is not a folder"):
        check_out_dir(tmp_path / "file", command="x")
