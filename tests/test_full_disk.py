"""A disk that fills up mid-run (docs/reliability.md, "Full disk").

The run stops with one line (``no space left on OUT (...); N images kept, rerun to resume``) and exit code 1, leaves
no temporary or half-written file, and once there is space the same command ends byte for byte as a run that never
ran out. Two ways to run out: the file-size limit (RLIMIT_FSIZE: EFBIG, works anywhere) and a real, small tmpfs
(ENOSPC; needs root, skipped where mounting is not allowed).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_image_folder
from evaluate_helpers import write_folder
from hostile import AUGMENT, assert_consistent, cli_options, outputs, run_sgid, temporaries
from sgid.cli import main
from sgid.concepts import TrainSettings, learn_concepts
from sgid.errors import DiskFullError
from sgid.pipeline import augment

#: Journal lines of this run are about 4 KB: the journal outgrows this limit at its fifth image.
FILE_SIZE_LIMIT = 20_000
LIMIT = {"RLIMIT_FSIZE": (FILE_SIZE_LIMIT, resource.RLIM_INFINITY)}
CONCEPTS = TrainSettings(steps=2, batch_size=1, checkpoint_every=1)


@pytest.fixture(scope="module")
def disk_case(hostile_run: tuple[Path, Path]) -> tuple[Path, Path]:
    return hostile_run


def test_the_file_size_limit_stops_the_run_in_one_line_and_the_rerun_completes_it(
    disk_case: tuple[Path, Path], cache_dir: Path, tmp_path: Path
) -> None:
    source, reference = disk_case
    out = tmp_path / "out"
    # --no-cache: the limit would also stop SQLite from making its shared-memory file (a warning, not the point)
    options = [*cli_options(AUGMENT), "--no-cache"]
    code, stderr = run_sgid("augment", source, "--out", out, *options, cache_dir=cache_dir, rlimits=LIMIT)
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    match = re.fullmatch(
        rf"sgid: error: no space left on {re.escape(str(out))} \(the file size limit is reached\); "
        r"(\d+) images? kept, rerun to resume",
        lines[0],
    )
    assert match, lines[0]
    kept = assert_consistent(out)
    assert kept == int(match.group(1)) and 1 <= kept < 12
    code, stderr = run_sgid("augment", source, "--out", out, *options, cache_dir=cache_dir)
    assert code == 0, stderr
    assert outputs(out) == outputs(reference)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed (not root, a container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({tried.stderr.decode().strip()}); the RLIMIT_FSIZE test covers this")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on ``disk``."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    size = filler.stat().st_size
    with open(filler, "r+b") as handle:
        handle.truncate(max(0, size - leave))


def grow(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)


def test_a_full_disk_stops_the_run_and_the_rerun_after_freeing_space_completes_it(
    disk_case: tuple[Path, Path], cache_dir: Path, small_disk: Path
) -> None:
    source, reference = disk_case
    out = small_disk / "out"
    fill(small_disk, leave=40_000)
    with pytest.raises(
        DiskFullError, match=r"no space left on .* \(the disk is full\); \d+ images? kept, rerun"
    ) as full:
        augment(source, out, cache_dir=cache_dir, **AUGMENT)
    assert full.value.exit_code == 1
    kept = assert_consistent(out, manifest=False)  # the manifests may not fit on the full disk: rewritten next run
    assert kept < 12 and f"{kept} images kept" in str(full.value)
    grow(small_disk)
    augment(source, out, cache_dir=cache_dir, **AUGMENT)
    assert outputs(out) == outputs(reference) and temporaries(out) == []


# -- the evaluate store and the concepts folder ---------------------------------------------------------------
EVALUATE = ["--backbone", "small_cnn", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--quiet"]
EVALUATE += ["--methods", "baseline,cutmix", "--seeds", "2"]
PAGE = os.sysconf("SC_PAGE_SIZE")  # a tmpfs counts whole pages


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("full-disk-evaluate")
    train = write_folder(root / "train", {"cat": 6, "dog": 6})
    test = write_folder(root / "test", {"cat": 4, "dog": 4}, offset=100)
    reference = root / "reference"
    assert main(["evaluate", "--train", str(train), "--test", str(test), "--out", str(reference), *EVALUATE]) == 0
    assert main(["evaluate", "--train", str(train), "--test", str(test), "--out", str(reference), *EVALUATE]) == 0
    return {"train": train, "test": test, "reference": reference}


def evaluate_args(toy: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--train", str(toy["train"]), "--test", str(toy["test"]), "--out", str(out), *EVALUATE, *extra]


def accuracies(out: Path) -> list[tuple[str, int, float, float]]:
    runs = json.loads((out / "results.json").read_text())["runs"]
    return [(r["variant"], r["seed"], r["accuracy"], r["details"]["final_train_loss"]) for r in runs]


def test_evaluate_at_the_file_size_limit_keeps_its_runs_and_the_rerun_only_writes_the_report(
    toy: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plot (about 20 KB) is the largest file: the limit stops the report after every run is finished."""
    out = tmp_path / "out"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (15_000, hard))
    try:
        code = main(evaluate_args(toy, out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [
        f"sgid: error: no space left on {out} (the file size limit is reached); 4 finished training runs kept, "
        f"rerun to resume"
    ]
    assert temporaries(out) == [] and not list(out.glob("plots/*.png"))
    runs = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("seed*.json")}
    assert len(runs) == 4
    assert main(evaluate_args(toy, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("seed*.json")} == runs  # nothing trained again
    assert accuracies(out) == accuracies(toy["reference"])


def test_evaluate_on_a_full_disk_keeps_finished_runs_and_completes_after_freeing_space(
    toy: dict[str, Path], small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --save-models (108 KB classifiers), about 250 KB hold two runs."""
    out = small_disk / "out"
    fill(small_disk, leave=250_000)
    assert main(evaluate_args(toy, out, "--save-models")) == 1
    err = capsys.readouterr().err
    assert "(the disk is full); 2 finished training runs kept, rerun to resume" in err
    assert temporaries(out) == []
    assert sorted(p.name for p in out.rglob("classifier.safetensors")) == ["classifier.safetensors"] * 2
    grow(small_disk)
    assert main(evaluate_args(toy, out, "--save-models")) == 0
    assert accuracies(out) == accuracies(toy["reference"])
    assert temporaries(out) == []


def test_learn_concepts_on_a_full_disk_keeps_finished_classes_and_completes_after_freeing_space(
    small_disk: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """Four free pages hold the first class (its checkpoint, embedding and index) but not the second."""
    dataset = make_image_folder(tmp_path / "input", {"cat": 2, "golden_retriever": 1})
    options = {"models": "tiny", "cache_dir": cache_dir, "quiet": True}
    reference = tmp_path / "reference"
    learn_concepts(dataset, reference, CONCEPTS, **options)  # type: ignore[arg-type]
    out = small_disk / "concepts"
    fill(small_disk, leave=4 * PAGE)
    with pytest.raises(DiskFullError, match=r"\(the disk is full\); 1 finished class kept, rerun to resume"):
        learn_concepts(dataset, out, CONCEPTS, **options)  # type: ignore[arg-type]
    assert temporaries(out) == [] and (out / "cat.safetensors").is_file()
    grow(small_disk)
    summary = learn_concepts(dataset, out, CONCEPTS, **options)  # type: ignore[arg-type]
    assert (summary.already_done, summary.trained) == (1, 1)
    for name in ("cat.safetensors", "golden_retriever.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert (
        json.loads((out / "concepts.json").read_text())["classes"]
        == json.loads((reference / "concepts.json").read_text())["classes"]
    )
