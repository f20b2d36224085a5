"""A run killed at any moment (kill -9) and rerun ends exactly as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_image_folder
from sgid.errors import RunDirError
from sgid.pipeline import augment
from sgid.runstore import JOURNAL, RunStore

OPTIONS = ["--models", "tiny", "--steps", "20", "-k", "2", "--quiet"]


def snapshot(out: Path) -> dict[str, bytes]:
    """Every user-visible file; run.json without the fields that name the invocation (its folder)."""
    result = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }
    run = json.loads(result.pop("run.json"))
    for volatile in ("command",):
        run.pop(volatile)
    for section in (run["config"], run["identity"]):
        for execution_only in ("out_dir", "cache_dir", "caption_cache", "batch_size"):
            section.pop(execution_only, None)
    run.pop("identity_sha256")
    result["run.json"] = json.dumps(run, sort_keys=True).encode()
    return result


def start(source: Path, out: Path, cache_dir: Path, batch: int) -> subprocess.Popen:  # type: ignore[type-arg]
    env = dict(os.environ, SGID_CACHE=str(cache_dir), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "sgid", "augment", str(source), "--out", str(out), "--batch-size", str(batch)]
    return subprocess.Popen(command + OPTIONS, env=env, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> None:  # type: ignore[type-arg,no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else "exited early"
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.02)
    assert process.poll() is None, "finished before it could be killed: the test would prove nothing"
    process.send_signal(signal.SIGKILL)
    process.wait()


def journal_rows(out: Path) -> int:
    path = out / JOURNAL
    return path.read_bytes().count(b"\n") if path.exists() else 0


def run_killed_then_resumed(source: Path, out: Path, cache_dir: Path, batch: int, ready) -> None:  # type: ignore[no-untyped-def]
    kill_when(start(source, out, cache_dir, batch), ready)
    resumed = start(source, out, cache_dir, batch)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode() if resumed.stderr else ""


def uninterrupted(source: Path, out: Path, cache_dir: Path, batch: int) -> Path:
    """The reference: the same settings as OPTIONS, run in one go (captions computed, not cached)."""
    augment(
        source,
        out,
        models="tiny",
        steps=20,
        multiplier=2,
        batch_size=batch,
        quiet=True,
        cache_dir=cache_dir,
        caption_cache=False,
    )
    return out


@pytest.mark.parametrize("batch", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_kill_during_generation_then_rerun_equals_uninterrupted(tmp_path: Path, cache_dir: Path, batch: int) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 3, "b": 3}, size=(32, 24))
    reference = uninterrupted(source, tmp_path / "reference", cache_dir, batch)
    out = tmp_path / "killed"
    run_killed_then_resumed(source, out, cache_dir, batch, lambda: journal_rows(out) >= 3)
    got, expected = snapshot(out), snapshot(reference)
    assert got.keys() == expected.keys() and len([k for k in got if k.endswith(".png")]) == 12
    if batch == 1:
        assert got == expected  # byte for byte
    else:  # manifests byte for byte; pixels within batched-arithmetic rounding
        assert {k: v for k, v in got.items() if not k.endswith(".png")} == {
            k: v for k, v in expected.items() if not k.endswith(".png")
        }


@pytest.mark.slow
def test_kill_during_captioning_then_rerun_equals_uninterrupted(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 12, "b": 12}, size=(32, 24))
    reference = uninterrupted(source, tmp_path / "reference", cache_dir, 1)
    fresh_cache = tmp_path / "fresh-cache"  # nothing cached: the first run must caption
    (fresh_cache / "tiny-models").mkdir(parents=True)
    os.symlink(cache_dir / "tiny-models" / "v2", fresh_cache / "tiny-models" / "v2")
    out = tmp_path / "killed"
    run_killed_then_resumed(source, out, fresh_cache, 1, lambda: (fresh_cache / "cache.sqlite").exists())
    assert snapshot(out) == snapshot(reference)


def test_torn_journal_line_is_ignored_and_truncated(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = RunStore(out, {"sgid_version": "test"}, {"x": 1})
    with store.session():
        store.commit_image("a", {"file_name": "c/a.png", "source": "c/a.png", "k": 0}, b"png-a")
    with open(out / JOURNAL, "ab") as journal:
        journal.write(b'{"kind": "row", "key": "b", "row": {"file_na')  # killed mid-write
    store = RunStore(out, {"sgid_version": "test"}, {"x": 1})
    with store.session():
        assert store.is_done("a") and not store.is_done("b")
    assert (out / JOURNAL).read_bytes().endswith(b"}\n")


def test_an_image_deleted_by_hand_is_regenerated(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with RunStore(out, {}, {"x": 1}).session() as store:
        store.commit_image("a", {"file_name": "c/a.png", "source": "c/a.png", "k": 0}, b"png-a")
    (out / "c" / "a.png").unlink()
    with RunStore(out, {}, {"x": 1}).session() as store:
        assert not store.is_done("a")


def test_a_second_concurrent_run_is_refused(tmp_path: Path) -> None:
    with RunStore(tmp_path / "out", {}, {"x": 1}).session():
        with pytest.raises(RunDirError, match="another sgid run"):
            RunStore(tmp_path / "out", {}, {"x": 1}).open()
