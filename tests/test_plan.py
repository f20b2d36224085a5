"""Plan: batches and shards are fixed from the full item list, so resumed runs make the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST, make_image_folder
from sgid.dataset import Source
from sgid.pipeline import augment
from sgid.plan import Slot, lay_out


def slot(name: str, k: int = 0, size: tuple[int, int] = (32, 32), kind: str = "img2img") -> Slot:
    source = Source(path=Path("/x") / name, relpath=name, class_name=name.split("/")[0], label="x")
    return Slot(source, k, f"{name}:{k}", f"{name}_{k}.png", kind, size)


def test_batches_group_equal_sizes_in_source_order_and_shards_never_split_a_batch() -> None:
    slots = [slot(f"a/{i}.png", size=(32, 32) if i % 3 else (48, 32)) for i in range(10)]
    layout = lay_out(slots, batch_size=3, shard_size=4)
    names = [[s.source.relpath for s in batch] for batch in layout.batches]
    assert names == [
        ["a/1.png", "a/2.png", "a/4.png"],
        ["a/5.png", "a/7.png", "a/8.png"],
        ["a/0.png", "a/3.png", "a/6.png"],
        ["a/9.png"],
    ]
    assert sorted(s.key for s in layout.slots) == sorted(s.key for s in slots)
    many = lay_out([slot(f"a/{i:02}.png", size=(32, 32) if i % 3 else (48, 32)) for i in range(60)], 3, 7)
    sizes: dict[int, int] = {}
    for batch, shard in zip(many.batches, many.shard_of, strict=True):
        sizes[shard] = sizes.get(shard, 0) + len(batch)  # whole batches only
    assert list(sizes) == sorted(sizes) and all(7 <= n < 7 + 3 for n in list(sizes.values())[:-1])


def test_small_runs_get_several_shards_per_worker_and_shards_do_not_change_batches() -> None:
    slots = [slot(f"a/{i}.png") for i in range(16)]
    one, two = lay_out(slots, 2, 64, workers=1), lay_out(slots, 2, 64, workers=2)
    assert one.batches == two.batches
    assert len(set(one.shard_of)) == 4 and len(set(two.shard_of)) == 8


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Path]:
    """Five 24x20 sources and two 32x32 ones, k=2, batch size 3: batches of two sizes, one partly filled."""
    root = tmp_path_factory.mktemp("plan")
    source = make_image_folder(root / "in", {"a": 3, "b": 2}, size=(24, 20))
    make_image_folder(root / "in", {"c": 2}, size=(32, 32), seed=5)
    augment(source, root / "reference", batch_size=3, multiplier=2, cache_dir=cache_dir, **FAST)
    return source, root / "reference"


def test_a_partly_done_batch_is_remade_whole_and_only_its_missing_items_are_written(
    reference: tuple[Path, Path], tmp_path: Path, cache_dir: Path
) -> None:
    import shutil

    source, done = reference
    out = tmp_path / "out"
    shutil.copytree(done, out)
    gone = ["a/1_sgid_0.png", "b/0_sgid_1.png", "c/1_sgid_1.png"]  # members of three different batches
    for name in gone:
        (out / name).unlink()  # an image deleted by hand is not done: it is made again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    summary = augment(source, out, batch_size=3, multiplier=2, cache_dir=cache_dir, **FAST)
    assert (summary.generated, summary.already_done) == (3, 11)  # nothing made twice, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if p in before} == before
    assert pngs(out) == pngs(done)  # byte for byte at batch size 3, as if never interrupted
    assert (out / "metadata.jsonl").read_bytes() == (done / "metadata.jsonl").read_bytes()


def test_shard_size_does_not_change_the_output(reference: tuple[Path, Path], tmp_path: Path, cache_dir: Path) -> None:
    source, done = reference
    augment(source, tmp_path / "out", batch_size=3, multiplier=2, shard_size=1, cache_dir=cache_dir, **FAST)
    assert pngs(tmp_path / "out") == pngs(done)
