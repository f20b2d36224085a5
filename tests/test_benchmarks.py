"""The benchmark scripts run (with settings small enough for a test); their figures are measured elsewhere."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run(script: str, *args: str, cwd: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_gpu_throughput_smoke_runs_on_the_cpu_and_writes_its_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (the script is ``python benchmarks/gpu_throughput.py``; a new interpreter would spend longer
    importing torch and diffusers than the smoke run takes)."""
    monkeypatch.setattr(sys, "argv", ["gpu_throughput.py", "--smoke", "--out", str(tmp_path / "gpu.json")])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(BENCHMARKS / "gpu_throughput.py"), run_name="__main__")
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["smoke"] is True and result["setting"]["denoising_steps"] == 2
    assert {(r["dtype"], r["batch"]) for r in result["results"]} == {("fp32", 1), ("fp32", 2)}
    assert result["loop_img_per_s"] > 0 and result["ratio_to_loop"] > 0 and result["flops_per_guided_step"] > 0
    assert 0 < result["flop_limit_share"] and "x the per-image loop" in out and "of the FLOP limit" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, printed",
    [
        ("bench_end_to_end.py", ["--images", "2", "--steps", "2", "--repeats", "1", "--smoke"], "sgid/loop time"),
        ("bench_overhead.py", ["--images", "2", "--steps", "2", "--smoke"], "model calls"),
        ("bench_memory.py", ["--small", "4", "--large", "8"], "inputs"),
        ("bench_engine.py", ["--images", "2", "--steps", "2", "--repeats", "1", "--smoke"], "ray/local"),
        ("bench_image_check.py", ["--jpegs", "70", "--pngs", "70", "--repeats", "1"], "unreadable()"),
    ],
)
def test_benchmarks_run_with_small_settings(script: str, args: list[str], printed: str, tmp_path: Path) -> None:
    assert printed in run(script, *args, "--work", str(tmp_path / "work"), cwd=tmp_path)
