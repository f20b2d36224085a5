"""A second run with other generation settings: captions recomputed vs read from the cache.

python benchmarks/bench_cache.py
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

from common import cache_dir, compare, images, report

from sgid.pipeline import augment

N = 16
CLASSES = ("cat", "dog", "bird", "fish")  # words, so the run does not warn that its labels look like codes


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="sgid-bench-"))
    try:
        for i, image in enumerate(images(N)):
            folder = work / "in" / CLASSES[i % len(CLASSES)]
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")
        options = {"models": "tiny", "steps": 4, "noise": 0.3, "quiet": True, "cache_dir": cache_dir()}
        augment(work / "in", work / "fill", noise=0.5, **{k: v for k, v in options.items() if k != "noise"})
        runs = itertools.count()

        def recompute() -> None:
            augment(work / "in", work / f"run{next(runs)}", caption_cache=False, **options)

        def cached() -> None:
            augment(work / "in", work / f"run{next(runs)}", **options)

        slow, fast = compare(recompute, cached, repeats=3)
        report(f"augment {N} images, 4 steps x noise 0.3", "captions computed", slow, "captions from the cache", fast)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
