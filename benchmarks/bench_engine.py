"""The engine's cost: ``--engine ray --workers 1`` vs ``--engine local`` on the same job.

    python benchmarks/bench_engine.py                      # 16 images, realistic-proportion models, 3 repeats
    python benchmarks/bench_engine.py --images 4 --steps 2 --repeats 1 --smoke   # checks that it runs

Each run is a fresh process (local, ray, local, ray, ...), timed from the call to ``augment`` to its end: for
ray that includes starting a local Ray, its actors and their model loading. One worker does the same
arithmetic as the local engine, so the ratio is what the engine costs; more workers pay off with more GPUs or
machines, not on a 2-core CPU (no speed-up is claimed here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def child(options: dict, source: str, out: str) -> None:
    from sgid.pipeline import augment

    started = time.perf_counter()
    augment(source, out, **options)
    print(json.dumps({"seconds": time.perf_counter() - started}))


def seconds(options: dict, source: Path, out: Path) -> float:
    from common import in_child

    return float(in_child(__file__, "--child", json.dumps(options), str(source), str(out))["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny models: check that the script runs")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child[0]), args.child[1], args.child[2])
    from bench_end_to_end import make_images
    from common import fresh, sgid_options
    from models import REALISTIC, SMOKE, realistic_models

    work = args.work or Path(tempfile.mkdtemp(prefix="sgid-bench-engine-"))
    models = realistic_models(work / "models", SMOKE if args.smoke else REALISTIC)
    source = work / "input" / str(args.images)
    if not source.exists():
        make_images(source, args.images, mixed=False, size=64 if args.smoke else 256)
    common = sgid_options(models, args.steps)
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for repeat in range(args.repeats):
        for engine in times:
            options = {**common, "engine": engine, **({"workers": 1} if engine == "ray" else {})}
            times[engine].append(seconds(options, source, fresh(work / "out" / f"{engine}-{repeat}")))
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    ratio = ray / local
    print(f"engine, {args.images} images: local {local:.1f} s, ray with 1 worker {ray:.1f} s -> ray/local {ratio:.2f}")


if __name__ == "__main__":
    main()
