"""Reading a run while ``sgid augment`` writes it (docs/reliability.md, "Concurrent readers").

Readers (filter, metrics, evaluate, review, a chained augment) see the last complete manifest, whose images are all
whole, with a warning, or refuse in one line while the run has no manifest yet; never a parse error or a half-written
image. A second ``sgid augment`` on the same OUT refuses at once.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_image_folder, noise_image
from hostile import AUGMENT, cli_options, journal_rows, run_sgid, start_sgid, wait_for
from sgid.cli import main
from sgid.errors import SgidError
from sgid.images import png_bytes
from sgid.manifest import being_written
from sgid.review.server import open_session
from sgid.rundir import read_run_dir
from sgid.runstore import RunStore


def test_readers_see_only_whole_manifests_and_images_while_a_run_is_written(tmp_path: Path) -> None:
    """A writer thread commits 60 images, rewriting the manifests after each; the reader opens everything listed."""
    out = tmp_path / "out"
    pngs = [png_bytes(noise_image(i, (64, 48))) for i in range(60)]
    store = RunStore(out, {}, {"x": 1}).open()
    done = threading.Event()

    def write() -> None:
        try:
            for i, png in enumerate(pngs):
                name = f"c/{i:02d}.png"
                store.commit_image(name, {"file_name": name, "label": "c", "source": name, "k": 0}, png)
                store.write_manifests()
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[int] = []
    refused = 0
    try:
        while not done.is_set() or not seen or seen[-1] < len(pngs):
            try:
                run = read_run_dir(out)
            except SgidError as exc:  # before the first manifest: the one line saying why
                assert "is being written by a running sgid augment and has no manifest yet" in str(exc)
                refused += 1
                continue
            for entry in run.entries:
                with Image.open(entry.path) as image:
                    image.load()  # a half-written PNG fails here
            seen.append(len(run.entries))
    finally:
        writer.join()
        store.close()
    assert seen == sorted(seen) and seen[-1] == len(pngs) and len(set(seen)) > 5  # many snapshots, each whole
    assert not being_written(out)


def test_filter_metrics_evaluate_and_review_on_a_run_being_written(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 3, "b": 3}, size=(32, 24))
    test = make_image_folder(tmp_path / "test", {"a": 2, "b": 2}, size=(32, 24), seed=7)
    out = tmp_path / "out"
    command = ["augment", source, "--out", out, *cli_options(AUGMENT)]
    # 1. A run stopped (SIGSTOP: its lock held) before its first manifest: readers refuse in one line, and so
    #    does a second augment on the same OUT, at once.
    first = start_sgid(*command, cache_dir=cache_dir)
    wait_for(first, lambda: journal_rows(out) >= 1)
    first.send_signal(signal.SIGSTOP)
    try:
        assert main(["metrics", str(out), "--out", str(tmp_path / "m0"), "--cache-dir", str(cache_dir), "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is being written by a running sgid augment and has no manifest yet" in err[0]
        with pytest.raises(SgidError, match="is being written by a running sgid augment and has no manifest yet"):
            open_session([out], cache_dir=cache_dir)  # what `sgid review OUT` opens before it serves
        code, stderr = run_sgid(*command, cache_dir=cache_dir, timeout=120)
        assert code == 2 and "another sgid run is writing to" in stderr and len(stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGCONT)
    first.send_signal(signal.SIGTERM)  # writes the manifest of what it finished
    assert first.wait(timeout=300) == 143
    kept = len((out / "metadata.jsonl").read_text().splitlines())
    assert 1 <= kept < 12
    # 2. The rerun, stopped after it made more: readers use the last complete manifest (the first run's), whole.
    second = start_sgid(*command, cache_dir=cache_dir)
    wait_for(second, lambda: journal_rows(out) > kept)
    second.send_signal(signal.SIGSTOP)
    try:
        assert main(["filter", str(out), "--filters", "label", "--out", str(tmp_path / "f"), "-q"]) == 0
        filtered = [json.loads(line) for line in (tmp_path / "f" / "decisions.jsonl").read_text().splitlines()]
        assert len(filtered) == kept
        assert main(["metrics", str(out), "--out", str(tmp_path / "m"), "--cache-dir", str(cache_dir), "-q"]) == 0
        evaluate = ["evaluate", "--train", str(source), "--test", str(test), "--generated", str(out)]
        evaluate += ["--methods", "baseline,generated", "--seeds", "1", "--backbone", "small_cnn", "--epochs", "1"]
        assert main([*evaluate, "--batch-size", "8", "--threads", "1", "--out", str(tmp_path / "e"), "-q"]) == 0
        runs = json.loads((tmp_path / "e" / "results.json").read_text())["runs"]
        assert {r["method"] for r in runs} == {"baseline", "generated"}
        review = open_session([out], cache_dir=cache_dir)  # its database in OUT, as `sgid review OUT` puts it
        try:
            assert len(review.catalog.items) == kept
            for item in review.catalog.items:
                review.thumbnails.get(item.path)  # decodes the image: a half-written one fails
        finally:
            review.db.close()
        err = capsys.readouterr().err
        assert (
            f"{out} is being written by a running sgid augment: using its last complete manifest ({kept} images)" in err
        )
    finally:
        second.send_signal(signal.SIGCONT)
    assert second.wait(timeout=300) == 0
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 12 and not being_written(out)
