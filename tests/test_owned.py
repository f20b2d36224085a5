"""The owned-folder base shared by the run store, the evaluation store and the concepts folder: foreign folders
refused, a lock held by another process refused in one line (exit 2), a job with other settings refused unless
--overwrite, which removes only what sgid wrote."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from evaluate_helpers import write_folder
from sgid.cli import main
from sgid.concepts.store import ConceptsDir
from sgid.errors import RunDirError
from sgid.evaluate.store import EvaluationStore
from sgid.owned import FolderLock, OwnedFolder
from sgid.runstore import RunStore

Open = Callable[[Path, dict[str, int], bool], OwnedFolder]


def _run(path: Path, identity: dict[str, int], overwrite: bool) -> OwnedFolder:
    return RunStore(path, {}, identity, overwrite=overwrite).open()


def _evaluation(path: Path, identity: dict[str, int], overwrite: bool) -> OwnedFolder:
    return EvaluationStore(path, identity, overwrite=overwrite).open()


def _concepts(path: Path, identity: dict[str, int], overwrite: bool) -> OwnedFolder:
    return ConceptsDir(path, identity, overwrite=overwrite).open({})


STORES = {"run": _run, "evaluation": _evaluation, "concepts": _concepts}
#: A file each store writes (besides its marker), and so removes with --overwrite.
WRITTEN = {"run": "metadata.jsonl", "evaluation": "results.md", "concepts": "loss.csv"}


@pytest.fixture(params=sorted(STORES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _close(folder: OwnedFolder) -> None:
    folder.close()  # each store's own (the run store also closes its journal)


def test_a_foreign_folder_is_refused_and_left_as_it_was(kind: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="is not empty and holds no"):
        STORES[kind](out, {"x": 1}, True)  # not even --overwrite takes over a foreign folder
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", *_lock_files(out)])
    assert (out / "notes.txt").read_text() == "mine"
    FolderLock(out, _lock_name(kind)).acquire("the refusal gave the lock back").release()


def _lock_files(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".sgid-")]


def _lock_name(kind: str) -> str:
    return {"run": RunStore, "evaluation": EvaluationStore, "concepts": ConceptsDir}[kind].lock_name


def test_other_settings_are_refused_the_same_are_resumed_and_overwrite_removes_only_what_sgid_wrote(
    kind: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _close(STORES[kind](out, {"x": 1}, False))
    (out / WRITTEN[kind]).write_text("sgid wrote this")
    _close(STORES[kind](out, {"x": 1}, False))  # the same settings: resumed, nothing removed
    assert (out / WRITTEN[kind]).exists()
    with pytest.raises(RunDirError, match=r"different settings \(x\)"):
        STORES[kind](out, {"x": 2}, False)
    FolderLock(out, _lock_name(kind)).acquire("the refusal gave the lock back").release()
    (out / "notes.txt").write_text("mine")  # a user's file added since
    _close(STORES[kind](out, {"x": 2}, True))
    assert not (out / WRITTEN[kind]).exists()
    assert (out / "notes.txt").read_text() == "mine"


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Callable[[Path, str], None]]:
    """``hold(folder, lock name)``: another process takes the folder's lock and keeps it until the test ends."""
    holders: list[subprocess.Popen[str]] = []

    def hold(folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        code = (
            "import fcntl, sys; h = open(sys.argv[1], 'a'); fcntl.flock(h, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", code, str(folder / name)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        holders.append(holder)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

    yield hold
    for holder in holders:
        holder.communicate(timeout=30)


def test_a_lock_held_by_another_process_is_refused(
    kind: str, tmp_path: Path, held_lock: Callable[[Path, str], None]
) -> None:
    out = tmp_path / "out"
    held_lock(out, _lock_name(kind))
    with pytest.raises(
        RunDirError, match=f"another sgid .* is writing to {re.escape(str(out))}; wait for it or"
    ) as refused:
        STORES[kind](out, {"x": 1}, False)
    assert refused.value.exit_code == 2 and "\n" not in str(refused.value)
    assert not any(p.name in ("run.json", "evaluation.json", "concepts.json") for p in out.iterdir())


def test_sgid_evaluate_on_a_folder_another_process_writes_exits_2_in_one_line(
    tmp_path: Path, held_lock: Callable[[Path, str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    train = write_folder(tmp_path / "train", {"cat": 3, "dog": 3})
    test = write_folder(tmp_path / "test", {"cat": 2, "dog": 2}, offset=100)
    out = tmp_path / "eval"
    held_lock(out, EvaluationStore.lock_name)
    argv = ["evaluate", "--train", str(train), "--test", str(test), "--out", str(out), "--backbone", "small_cnn"]
    assert main([*argv, "--epochs", "1", "--seeds", "1", "--threads", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"sgid: error: another sgid evaluate is writing to {out}; wait for it or use another --out\n"
    assert [p.name for p in out.iterdir()] == [EvaluationStore.lock_name]  # nothing trained, nothing written
