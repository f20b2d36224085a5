"""SIGTERM and SIGINT stop ``sgid augment`` at a clean point (docs/reliability.md, "Signals").

The first signal lets the batch in flight finish; every finished image is committed, the manifests are written, the
lock is released, and the command exits with 128 + the signal (143, 130) and a line saying how to resume. A second
signal exits at once. Rerunning the same command ends byte for byte as a run that was never stopped.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostile import (
    AUGMENT,
    assert_consistent,
    cli_options,
    journal_rows,
    outputs,
    start_sgid,
    wait_for,
)
from sgid import interrupt
from sgid.interrupt import Interrupted
from sgid.pipeline import augment
from sgid.stages.bundle import Stages


@pytest.fixture(scope="module")
def signal_case(hostile_run: tuple[Path, Path]) -> tuple[Path, Path]:
    return hostile_run


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)]
)
def test_a_signal_keeps_every_finished_image_and_the_rerun_is_identical(
    signal_case: tuple[Path, Path], cache_dir: Path, tmp_path: Path, signum: int, code: int
) -> None:
    source, reference = signal_case
    out = tmp_path / "out"
    process = start_sgid("augment", source, "--out", out, *cli_options(AUGMENT), cache_dir=cache_dir)
    wait_for(process, lambda: journal_rows(out) >= 1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr.decode()
    last = stderr.decode().strip().splitlines()[-1]
    name = signal.Signals(signum).name
    match = re.fullmatch(rf"sgid: stopped by {name}; (\d+) images? kept in \S+, rerun the same command to resume", last)
    assert match, last
    kept = assert_consistent(out)  # manifests written, lock released, no temporary or half-written file
    assert kept == int(match.group(1)) and 1 <= kept < 12
    summary = augment(source, out, cache_dir=cache_dir, **AUGMENT)
    assert (summary.already_done, summary.generated) == (kept, 12 - kept)
    assert outputs(out) == outputs(reference)


def test_a_second_signal_exits_at_once(signal_case: tuple[Path, Path], cache_dir: Path, tmp_path: Path) -> None:
    """Long batches (60 steps, 4 images), so the second signal lands while the first waits for one to finish."""
    source, _ = signal_case
    out = tmp_path / "out"
    slow = {**AUGMENT, "steps": 60, "noise": 1.0, "batch_size": 4}
    process = start_sgid("augment", source, "--out", out, *cli_options(slow), cache_dir=cache_dir)
    wait_for(process, lambda: journal_rows(out) >= 1)
    process.send_signal(signal.SIGTERM)
    assert process.stderr is not None
    first = process.stderr.readline().decode()
    assert "SIGTERM received: finishing the batch in flight" in first
    process.send_signal(signal.SIGTERM)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 143
    assert "second SIGTERM: stopped at once" in stderr and "images kept" not in stderr
    assert assert_consistent(out, manifest=False) >= 1  # every image on disk journaled and whole; the rerun resumes


class OneWriteAtATime(io.StringIO):
    """A stream that refuses a write from inside its own write, as a buffered ``sys.stderr`` does (its lock), and
    receives a signal in the middle of its first write (as a progress line can)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.writing = False

    def fileno(self) -> int:
        return self.fd

    def write(self, text: str) -> int:
        if self.writing:
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")
        self.writing = True
        try:
            if not self.getvalue():
                interrupt._handler(signal.SIGINT, None)  # the signal lands while this write holds the stream
            return super().write(text)
        finally:
            self.writing = False


def test_a_signal_during_a_write_to_stderr_is_reported_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    read, write = os.pipe()
    stream = OneWriteAtATime(write)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(interrupt, "_received", [])
    monkeypatch.setattr(interrupt, "_graceful", 1)  # as while sgid augment runs: the first signal is recorded
    stream.write("generating 3/12\n")
    os.close(write)
    with os.fdopen(read, "rb") as said:
        assert said.read().decode() == (
            "sgid: SIGINT received: finishing the batch in flight and writing the manifests "
            "(signal again to stop at once)\n"
        )
    assert interrupt._received == [signal.SIGINT] and stream.getvalue() == "generating 3/12\n"


def test_the_python_api_stops_cleanly_and_restores_the_handlers(
    signal_case: tuple[Path, Path], cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sgid.augment`` in a script: a stop asked for while the second batch is generated ends the run after it."""
    source, reference = signal_case
    generate, calls = Stages.generate, []

    def generate_then_stop(stages: Stages, *args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            interrupt.request_stop(signal.SIGINT)
        return generate(stages, *args)

    monkeypatch.setattr(Stages, "generate", generate_then_stop)
    out = tmp_path / "out"

    def scripts_own(signum: int, frame: object) -> None:
        raise AssertionError("sgid's handler is not in place")

    previous = [signal.signal(signum, scripts_own) for signum in (signal.SIGINT, signal.SIGTERM)]
    try:
        with pytest.raises(Interrupted) as stopped:
            augment(source, out, cache_dir=cache_dir, **AUGMENT)
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    finally:
        for signum, handler in zip((signal.SIGINT, signal.SIGTERM), previous, strict=True):
            signal.signal(signum, handler)
    assert stopped.value.exit_code == 130 and "4 images kept" in str(stopped.value)
    assert assert_consistent(out) == 4
    assert handlers == (scripts_own, scripts_own)  # the script's own handlers are back
    monkeypatch.undo()
    augment(source, out, cache_dir=cache_dir, **AUGMENT)
    assert outputs(out) == outputs(reference)


def test_an_ignored_sigint_stays_ignored(
    signal_case: tuple[Path, Path], cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell script's background job starts with SIGINT ignored (Ctrl-C in the terminal must not stop it):
    sgid keeps it ignored and the run ends whole, while SIGTERM is still handled."""
    source, reference = signal_case
    generate, seen = Stages.generate, []

    def generate_and_interrupt(stages: Stages, *args: Any) -> Any:
        seen.append(signal.getsignal(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGINT)  # delivered, and ignored
        return generate(stages, *args)

    monkeypatch.setattr(Stages, "generate", generate_and_interrupt)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = augment(source, tmp_path / "out", cache_dir=cache_dir, **AUGMENT)
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert summary.generated == 12 and after is signal.SIG_IGN
    assert seen and all(handler is interrupt._handler for handler in seen)
    assert outputs(tmp_path / "out") == outputs(reference)


def test_a_stop_while_planning_writes_nothing_it_did_not_finish(
    signal_case: tuple[Path, Path], cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sgid.pipeline

    source, _ = signal_case
    real = sgid.pipeline.probe_size

    def probe_then_stop(*args: object, **kwargs: object) -> tuple[int, int]:
        interrupt.request_stop()
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sgid.pipeline, "probe_size", probe_then_stop)
    with pytest.raises(Interrupted, match="stopped by SIGTERM; 0 images kept"):
        augment(source, tmp_path / "out", cache_dir=cache_dir, **AUGMENT)
    assert assert_consistent(tmp_path / "out") == 0


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray that drivers started as subprocesses join (``num_cpus=3``: see tests/test_engines.py)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.slow
def test_sigterm_stops_a_ray_driver_cleanly_and_the_rerun_is_identical(
    signal_case: tuple[Path, Path], cache_dir: Path, tmp_path: Path, ray_address: str
) -> None:
    """ray.init puts in its own SIGTERM handler (sys.exit): sgid's replaces it again. The tasks on the workers are
    dropped at once; what came back is committed."""
    source, reference = signal_case
    out = tmp_path / "out"
    ray = ["--engine", "ray", "--workers", "2", "--ray-address", ray_address, "--shard-size", "2"]
    process = start_sgid("augment", source, "--out", out, *cli_options(AUGMENT), *ray, cache_dir=cache_dir)
    wait_for(process, lambda: journal_rows(out) >= 1, timeout=300)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr.decode()
    assert "SIGTERM received: dropping the tasks in flight" in stderr.decode()
    kept = assert_consistent(out)
    assert 1 <= kept < 12
    augment(source, out, cache_dir=cache_dir, **AUGMENT)  # resumed on the local engine
    assert outputs(out) == outputs(reference)
