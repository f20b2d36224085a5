"""Shared pieces of the review tests: real runs of one input made without models (the perturbation methods), a
hostile caption planted in one, and an app or a live server over them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import make_image_folder
from sgid.pipeline import augment

METHODS = ("randaugment", "random_erasing", "cutmix")
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">&amp; "quotes"'
BASE = "http://127.0.0.1:8765"


def make_runs(
    root: Path, cache_dir: Path, classes: dict[str, int] | None = None, multiplier: int = 2, seed: int = 0
) -> list[Path]:
    """One run per perturbation method over one input folder (no model is loaded: fast)."""
    source = make_image_folder(root / "input", classes or {"cat": 3, "dog": 3, "fox": 2}, size=(40, 32), seed=seed)
    runs = []
    for method in METHODS:
        out = root / method
        augment(source, out, method=method, multiplier=multiplier, quiet=True, cache_dir=cache_dir)
        runs.append(out)
    return runs


def plant_caption(run: Path, text: str = HOSTILE) -> None:
    """Give every image of ``run`` a caption and prompt as a hostile model could write them."""
    manifest = run / "metadata.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["caption"] = text
        row["prompt"] = f"A picture of a {row['label']}, {text}"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))


def csrf_of(html: str) -> str:
    return html.split('name="csrf-token" content="')[1].split('"')[0]


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """The app on a real socket (uvicorn in a thread); yields its base URL."""
    import uvicorn

    from sgid.review.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the review server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
