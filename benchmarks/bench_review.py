"""sgid review on a 10,000-image run: opening it, rendering a gallery page, and a page's thumbnails made vs read
from the disk cache (what makes paging fast).

python benchmarks/bench_review.py [--images 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from itertools import count
from pathlib import Path

from common import compare, images, report

from sgid.review.server import make_app, open_session
from sgid.review.thumbs import Thumbnails

PER_SOURCE = 4  # augmentations per original


def synthetic_run(folder: Path, n: int) -> Path:
    """A run of ``n`` 512x512 images: hard links to 16 distinct files, 4 per original, 10 classes."""
    pictures = folder / "pictures"
    pictures.mkdir(parents=True)
    for i, picture in enumerate(images(16, (512, 512))):
        picture.save(pictures / f"{i}.png")
    run = folder / "run"
    rows = []
    for i in range(n):
        source = i // PER_SOURCE
        name = f"class{source % 10}/{source}_sgid_{i % PER_SOURCE}.png"
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(pictures / f"{i % 16}.png", run / name)
        rows.append(
            {
                "file_name": name,
                "label": f"class{source % 10}",
                "source": f"class{source % 10}/{source}.png",
                "k": i % PER_SOURCE,
                "method": "sgid",
                "similarity": (i * 7919 % 1000) / 1000,
                "guidance_scale": 1.0,
                "caption": f"a caption of image {i}",
            }
        )
    (run / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "run.json").write_text(json.dumps({"config": {"method": "sgid"}}))
    return run


def main() -> None:
    from starlette.testclient import TestClient

    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    n = parser.parse_args().images
    work = Path(tempfile.mkdtemp(prefix="sgid-bench-review-"))
    try:
        run = synthetic_run(work, n)
        started = time.perf_counter()
        session = open_session([run], db=work / "review.sqlite", cache_dir=work / "cache")
        opened = time.perf_counter() - started
        print(f"review: open a {n:,}-image run (manifest, index, database): {opened * 1000:.0f} ms")
        client = TestClient(make_app(session, token=None, allowed_hosts=None), base_url="http://127.0.0.1")

        def first_page() -> None:
            assert client.get("/gallery").status_code == 200

        def sorted_deep_page() -> None:
            assert client.get("/gallery?sort=-similarity&smin=0.2&page=100").status_code == 200

        plain, deep = compare(first_page, sorted_deep_page)
        report(f"gallery page of {n:,} images", "page 1", plain, "page 100, filtered and sorted", deep)

        page = [item.path for item in session.catalog.items[: 12 * PER_SOURCE]]
        cold = count()

        def made() -> None:
            thumbs = Thumbnails(work / f"cold-{next(cold)}")
            for path in page:
                thumbs.get(path)

        warm = Thumbnails(work / "warm")
        for path in page:
            warm.get(path)

        def cached() -> None:
            for path in page:
                warm.get(path)

        slow, fast = compare(made, cached, repeats=3)
        report(f"thumbnails of one page ({len(page)} images, 512x512)", "made", slow, "from the disk cache", fast)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
