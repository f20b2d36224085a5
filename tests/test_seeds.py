"""Seeds are per item: an image's result depends on its own path, k and the run seed, never on the other inputs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from conftest import FAST, make_image_folder, noise_image, one_thread
from sgid.pipeline import augment

OPTIONS = {**FAST, "multiplier": 2, "batch_size": 1, "caption": "nucleus", "caption_cache": False}


def by_item(out: Path) -> dict[tuple[str, int], tuple[dict, bytes]]:
    manifest = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    return {(r["source"], r["k"]): (r, (out / r["file_name"]).read_bytes()) for r in manifest}


def same_row(a: object, b: object) -> bool:
    """Manifest values equal, floats to 1e-6 (CLIP scores computed in another batch can differ in
    float32's last bits on some CPUs; a caption, seed, guidance or pixel may not)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_row(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_row(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_adding_removing_or_renaming_an_input_leaves_every_other_image_byte_identical(tmp_path, cache_dir) -> None:  # type: ignore[no-untyped-def]
    before = make_image_folder(tmp_path / "before", {"cat": 3, "dog": 2})
    after = tmp_path / "after"
    shutil.copytree(before, after)
    noise_image(77).save(after / "cat" / "added.png")  # sorts first: every other image moves in the list
    (after / "dog" / "1.png").unlink()
    (after / "cat" / "2.png").rename(after / "cat" / "renamed.png")
    with one_thread():  # captions and scores are batched over other groups: same bytes at one thread count
        # (and on some CPUs, such as an AMD EPYC, CLIP scores still differ in float32's last bits)
        augment(before, tmp_path / "out-before", cache_dir=cache_dir, **OPTIONS)
        augment(after, tmp_path / "out-after", cache_dir=cache_dir, **OPTIONS)
    first, second = by_item(tmp_path / "out-before"), by_item(tmp_path / "out-after")
    unchanged = [item for item in first if item[0] in ("cat/0.png", "cat/1.png", "dog/0.png")]
    assert len(unchanged) == 6
    for item in unchanged:
        assert second[item][1] == first[item][1], item  # PNG bytes
        # captions, seeds, guidance
        assert same_row(second[item][0], first[item][0]), (item, second[item][0], first[item][0])
    assert {item for item in second if item not in first} == {
        ("cat/added.png", 0),
        ("cat/added.png", 1),
        ("cat/renamed.png", 0),
        ("cat/renamed.png", 1),
    }
    # the renamed image is a new item: its own seeds, so new images
    assert second[("cat/renamed.png", 0)][0]["seed"] != first[("cat/2.png", 0)][0]["seed"]
    assert second[("cat/renamed.png", 0)][1] != first[("cat/2.png", 0)][1]


def test_each_k_of_a_source_has_its_own_seed_and_image(tmp_path, cache_dir) -> None:  # type: ignore[no-untyped-def]
    source = make_image_folder(tmp_path / "in", {"cat": 2})
    augment(source, tmp_path / "out", cache_dir=cache_dir, **{**OPTIONS, "multiplier": 3, "caption": "clip"})
    items = by_item(tmp_path / "out")
    assert len({row["seed"] for row, _ in items.values()}) == len(items) == 6
    for name in ("cat/0.png", "cat/1.png"):
        rows = [items[(name, k)][0] for k in range(3)]
        assert len({r["caption"] for r in rows}) == 1  # same caption (clip), same guidance: only the seed differs
        assert len({items[(name, k)][1] for k in range(3)}) == 3  # ... and three different images
