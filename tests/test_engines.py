"""Engines: the same bytes whoever runs the work, exactly once, whatever is killed.

One local Ray (``num_cpus=3``: two 1-CPU actors and one CPU spare for Ray Data's reads) is shared by the
module; drivers started as subprocesses join it with ``--ray-address``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import FAST, make_image_folder
from sgid.cli import main
from sgid.engines import ENGINES
from sgid.models.tiny import ensure_tiny_models
from sgid.pipeline import augment
from sgid.runstore import JOURNAL, KILL_AFTER_ROWS

SETTINGS = {"batch_size": 2, "multiplier": 2, "shard_size": 2, "caption_cache": False, **FAST}


@pytest.fixture(scope="module")
def ray_address() -> object:
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Path]:
    """Six sources of two sizes, k=2 at batch size 2 (batches of two sizes), made by the local engine."""
    root = tmp_path_factory.mktemp("engines")
    source = make_image_folder(root / "in", {"a": 2, "b": 2}, size=(24, 20))
    make_image_folder(root / "in", {"c": 2}, size=(32, 32), seed=3)
    augment(source, root / "local", cache_dir=cache_dir, **SETTINGS)
    return source, root / "local"


def snapshot(out: Path) -> dict[str, bytes]:
    """Every user-visible file; run.json by the identity of its settings (it also names the engine)."""
    files = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }
    files["run.json"] = json.loads(files["run.json"])["identity_sha256"].encode()
    return files


def journal_keys(out: Path) -> list[str]:
    lines = (out / JOURNAL).read_text().splitlines() if (out / JOURNAL).exists() else []
    return [json.loads(line)["key"] for line in lines if line.endswith("}")]


def test_every_engine_is_registered_with_one_signature() -> None:
    import inspect

    from sgid.engines.base import Engine

    assert ENGINES.names()[:2] == ["local", "ray"]
    for name in ENGINES.names():
        engine = ENGINES.get(name)
        assert issubclass(engine, Engine) and engine.name == name
        for method in ("start", "run", "close"):
            assert inspect.signature(getattr(engine, method)) == inspect.signature(getattr(Engine, method))


def test_ray_with_two_workers_makes_the_local_bytes(ray_address: str, job: tuple[Path, Path], tmp_path: Path) -> None:
    source, local = job
    summary = augment(source, tmp_path / "ray", engine="ray", workers=2, **SETTINGS)
    assert summary.generated == 12
    assert snapshot(tmp_path / "ray") == snapshot(local)
    assert sorted(journal_keys(tmp_path / "ray")) == sorted(set(journal_keys(tmp_path / "ray")))  # once each


@pytest.mark.slow
def test_ray_with_one_worker_makes_the_local_bytes(ray_address: str, job: tuple[Path, Path], tmp_path: Path) -> None:
    source, local = job
    augment(source, tmp_path / "ray", engine="ray", workers=1, **SETTINGS)
    assert snapshot(tmp_path / "ray") == snapshot(local)


@pytest.mark.slow
def test_a_dry_run_on_ray_counts_the_work_calibrates_on_a_worker_and_writes_nothing(
    ray_address: str, job: tuple[Path, Path], tmp_path: Path
) -> None:
    source, local = job
    out = tmp_path / "out"
    shutil.copytree(local, out)
    for name in ("a/0_sgid_1.png", "c/1_sgid_0.png", "c/1_sgid_1.png"):
        (out / name).unlink()  # not done any more
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    report = augment(source, out, engine="ray", workers=2, dry_run=True, **SETTINGS)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before
    assert (report.engine, report.workers) == ("ray engine, 2 workers", 2)
    assert (report.images, report.done, report.to_make) == (12, 9, 3) and report.unet_evaluations == 3 * 2 * 2
    assert report.generation_seconds is not None and report.seconds == pytest.approx(report.seconds_on(2))
    assert "on 8 workers" in "\n".join(report.lines())


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def actor_pids() -> list[int]:
    """This test process's Ray actors that run sgid workers (Ray names the process after the actor class)."""
    pids = []
    for pid in descendants(os.getpid()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "_RayWorker" in title:
            pids.append(pid)
    return pids


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_restarted_and_the_run_ends_identical(
    ray_address: str, job: tuple[Path, Path], tmp_path: Path
) -> None:
    source, local = job
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            pids = actor_pids()
            if pids and 1 <= len(journal_keys(out)) < 10:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    summary = augment(source, out, engine="ray", workers=2, **SETTINGS)
    killer.join()
    assert killed, "no worker was killed mid-run: the test would prove nothing"
    assert summary.generated == 12 and snapshot(out) == snapshot(local)
    assert sorted(journal_keys(out)) == sorted(set(journal_keys(out)))  # committed exactly once


def start_driver(source: Path, out: Path, engine: list[str], kill_after: int | None = None) -> subprocess.Popen:  # type: ignore[type-arg]
    """``sgid augment`` in a subprocess; with ``kill_after``, it SIGKILLs itself after that many journal rows."""
    flags = ["--batch-size", "2", "-k", "2", "--shard-size", "2", "--no-cache", "--models", "tiny", "--steps", "4"]
    command = [sys.executable, "-m", "sgid", "augment", str(source), "--out", str(out), *flags, "-q", *engine]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if kill_after is not None:
        env[KILL_AFTER_ROWS] = str(kill_after)
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("ray", "ray"), ("local", "ray"), ("ray", "local")])
def test_a_killed_driver_resumes_on_either_engine_to_the_same_bytes(
    ray_address: str, job: tuple[Path, Path], tmp_path: Path, first: str, then: str
) -> None:
    source, local = job
    out = tmp_path / "out"
    engine = ["--engine", "ray", "--workers", "2", "--ray-address", ray_address] if first == "ray" else []
    driver = start_driver(source, out, engine, kill_after=3)
    assert driver.wait(timeout=600) == -signal.SIGKILL, driver.stderr.read().decode() if driver.stderr else ""
    done = set(journal_keys(out))
    assert len(done) == 3
    options = {"engine": "ray", "workers": 2} if then == "ray" else {}
    summary = augment(source, out, **options, **SETTINGS)
    assert summary.already_done == len(done) and summary.generated == 12 - len(done)  # nothing made twice
    assert snapshot(out) == snapshot(local)
    assert sorted(journal_keys(out)) == sorted(set(journal_keys(out)))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--engine", "spark"], "unknown engine 'spark'; choose from: local, ray"),
        (["--workers", "2"], "--engine local runs one worker, not --workers 2; use --engine ray"),
        (["--gpus-per-worker", "0.5"], "--gpus-per-worker is an option of --engine ray"),
        (["--ray-address", "auto"], "--ray-address is an option of --engine ray"),
        (["--engine", "ray", "--workers", "0"], "invalid --workers 0: must be >= 1"),
        (["--engine", "ray", "--gpus-per-worker", "1.5"], "invalid --gpus-per-worker 1.5"),
        (["--engine", "ray", "--gpus-per-worker", "-1"], "invalid --gpus-per-worker -1.0"),
        (["--engine", "ray", "--gpus-per-worker", "x"], "invalid float value: 'x'"),
        (["--shard-size", "0"], "invalid --shard-size 0"),
        (["--vae-tiling", "always"], "invalid --vae-tiling 'always'; choose from: auto, on, off"),
        (["--engine", "ray", "--workers", "0", "--dry-run"], "invalid --workers 0: must be >= 1"),
    ],
)
def test_bad_engine_options_exit_2_in_one_line_before_any_model_loads(
    flags: list[str], message: str, image_folder: Path, tmp_path: Path, capsys, forbid_model_loading
) -> None:  # type: ignore[no-untyped-def]
    code = main(["augment", str(image_folder), "--out", str(tmp_path / "out"), "--models", "tiny", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sgid: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_without_ray_the_ray_engine_names_the_extra(
    image_folder: Path, tmp_path: Path, capsys, forbid_model_loading, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code = main(["augment", str(image_folder), "--out", str(tmp_path / "out"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'sgid[ray]'" in err and err.count("\n") == 1


def test_gpus_asked_of_a_cluster_without_gpus_exit_2_before_any_model_loads(
    ray_address: str, image_folder: Path, tmp_path: Path, capsys, forbid_model_loading, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # Only the cluster can say it has no GPUs, and it is joined after the models are resolved, which for
    # --models tiny builds them (once, on disk): allowed here. Loading a model is not.
    import sgid.models.tiny

    monkeypatch.setattr(sgid.models.tiny, "ensure_tiny_models", ensure_tiny_models)
    flags = ["--engine", "ray", "--gpus-per-worker", "1", "--models", "tiny"]
    code = main(["augment", str(image_folder), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and "the Ray cluster has no GPUs" in err and err.count("\n") == 1
