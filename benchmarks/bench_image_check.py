"""``sgid evaluate`` decodes every image once before training (an unreadable one is left out, not a stop half way):
the cost of that check, in threads (``sgid.evaluate.data.unreadable``) against one decode after another.

python benchmarks/bench_image_check.py [--jpegs 1000] [--pngs 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from common import compare, report
from PIL import Image

from sgid.evaluate.data import unreadable
from sgid.images import load_rgb


def write_images(folder: Path, count: int, size: int, suffix: str) -> list[Path]:
    """``count`` images with gradients and noise (so JPEG has real work), seeded."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, size)
    paths = []
    for i in range(count):
        image = (ramp[None, :, None] * rng.random(3) + ramp[:, None, None] * rng.random(3)) / 2
        image = np.clip(image + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i}{suffix}"
        Image.fromarray(image).save(path, **({"quality": 90} if suffix == ".jpg" else {}))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpegs", type=int, default=1000, help="512x512 JPEGs [default: 1000]")
    parser.add_argument("--pngs", type=int, default=5000, help="32x32 PNGs (CIFAR-sized) [default: 5000]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="folder for the images [default: a temporary one]")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sgid-bench-"))
    try:
        for name, count, size, suffix in (
            ("512x512 JPEGs", args.jpegs, 512, ".jpg"),
            ("32x32 PNGs", args.pngs, 32, ".png"),
        ):
            paths = write_images(work / suffix[1:], count, size, suffix)

            def one_by_one(paths: list[Path] = paths) -> None:
                for path in paths:
                    load_rgb(path)

            def threaded(paths: list[Path] = paths) -> None:
                assert not unreadable(paths)

            slow, fast = compare(one_by_one, threaded, repeats=args.repeats)
            report(f"check {count} {name}", "one after another", slow, "unreadable()", fast)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
