"""Overhead: the wall time of ``sgid augment`` / the time spent inside its model calls on the same batches.

    python benchmarks/bench_overhead.py                    # realistic-proportion models, 16 images
    python benchmarks/bench_overhead.py --images 4 --steps 2 --smoke   # checks that it runs

Every model call of a run (BLIP captioning, CLIP scoring, prompt encoding + the UNet/VAE generation of a batch)
is timed where it happens; everything else — listing, reading, decoding, resizing, planning, PNG encoding,
writing, the journal — is overhead, and reading ahead / encoding behind on threads hides part of it. Models are
loaded by a first run; the measured run starts with them in memory (captions computed, not cached). Target:
<= 1.10.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from bench_end_to_end import make_images  # noqa: E402
from common import fresh, sgid_options  # noqa: E402
from models import REALISTIC, SMOKE, realistic_models  # noqa: E402

from sgid.pipeline import augment  # noqa: E402
from sgid.stages.bundle import GenerateStage  # noqa: E402
from sgid.stages.caption import Captioner  # noqa: E402
from sgid.stages.score import ClipScorer  # noqa: E402

MODEL_CALLS: list[tuple[type, str]] = [
    (Captioner, "__call__"),
    (ClipScorer, "caption_similarities"),
    (GenerateStage, "__call__"),
]


def timed(total: list[float], function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny models: check that the script runs")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sgid-bench-overhead-"))
    models = realistic_models(work / "models", SMOKE if args.smoke else REALISTIC)
    source = work / "input" / f"{args.images}"
    if not source.exists():
        make_images(source, args.images, mixed=False, size=64 if args.smoke else 256)
    options = {**sgid_options(models, args.steps), "batch_size": 4}
    augment(source, fresh(work / "warm-up"), **options)  # loads the models (cached per process)
    inside = [0.0]
    for cls, name in MODEL_CALLS:
        setattr(cls, name, timed(inside, getattr(cls, name)))
    started = time.perf_counter()
    augment(source, fresh(work / "measured"), **options)
    wall = time.perf_counter() - started
    print(
        f"overhead, {args.images} images, {args.steps // 2} guided steps: end to end {wall:.1f} s, "
        f"model calls {inside[0]:.1f} s -> {wall / inside[0]:.3f}x"
    )


if __name__ == "__main__":
    main()
