"""Memory: peak resident memory of ``sgid augment`` for 100 vs 2,000 inputs (tiny models): it must not grow with
the size of the input (target: within +10%).

    python benchmarks/bench_memory.py                      # 100 vs 2000 inputs
    python benchmarks/bench_memory.py --small 10 --large 40   # checks that it runs

Each run is a fresh process; its peak RSS is read from the kernel at exit. (Against the per-image loop on the
realistic models: ``bench_end_to_end.py`` prints both peaks.)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def child(source: Path, out: Path) -> None:
    from sgid.pipeline import augment

    augment(source, out, models="tiny", steps=2, caption_cache=False, quiet=True)
    print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def peak(source: Path, out: Path) -> int:
    from common import in_child

    return int(in_child(__file__, "--child", str(source), str(out))["peak_bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from bench_end_to_end import make_images
    from common import fresh

    work = args.work or Path(tempfile.mkdtemp(prefix="sgid-bench-memory-"))
    peaks = {}
    for count in (args.small, args.large):
        source = work / f"input-{count}"
        if not source.exists():
            make_images(source, count, mixed=False, size=32)
        peaks[count] = peak(source, fresh(work / f"out-{count}"))
    small, large = peaks[args.small], peaks[args.large]
    print(
        f"memory, tiny models: peak RSS {args.small} inputs {small / 2**20:.0f} MiB, {args.large} inputs "
        f"{large / 2**20:.0f} MiB -> {100 * (large / small - 1):+.1f}%"
    )


if __name__ == "__main__":
    main()
