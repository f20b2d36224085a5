"""Shared helpers for the benchmarks: tiny models on the CPU, timing side by side in one process."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

CPU = torch.device("cpu")


def cache_dir() -> Path:
    from sgid.models.loading import default_cache_dir

    return default_cache_dir()


def tiny_models():  # type: ignore[no-untyped-def]
    from sgid.models.loading import resolve_models

    return resolve_models("tiny", cache_dir=cache_dir())


def images(n: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def compare(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int = 5) -> tuple[float, float]:
    """Median wall times of two callables, measured interleaved (A, B, A, B, ...) after a warm-up of each,
    so a busy machine slows both alike and the ratio stays meaningful."""
    baseline()
    candidate()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((baseline, times[0]), (candidate, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def report(name: str, baseline_label: str, baseline: float, candidate_label: str, candidate: float) -> None:
    print(
        f"{name}: {baseline_label} {baseline * 1000:.0f} ms, {candidate_label} {candidate * 1000:.0f} ms "
        f"-> {baseline / candidate:.2f}x"
    )


def in_child(script: str, *args: str) -> dict:
    """Run ``script args`` in a fresh Python process (its own peak memory, nothing cached); the last line it
    prints is a JSON object, returned."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def fresh(folder: Path) -> Path:
    """``folder``, emptied: a measured run always starts from nothing (in a ``--work`` folder kept from an earlier
    invocation, the same output folder would otherwise be a finished run, resumed in no time)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return folder


def sgid_options(models: dict, steps: int) -> dict:
    """``augment`` options for the benchmarks' models (``models.realistic_models``), captions computed."""
    return {
        "captioner": str(models["blip"]),
        "scorer": str(models["clip"]),
        "sd_model": str(models["sd"]),
        "steps": steps,
        "caption_cache": False,
        "quiet": True,
    }
