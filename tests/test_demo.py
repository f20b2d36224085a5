"""`sgid demo`: the main job on photos bundled with scikit-image, and its HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from conftest import FAST, make_image_folder
from sgid.demo import DEMO_IMAGES, build_demo_folder, run_demo
from sgid.errors import SgidError
from sgid.gallery import render_gallery
from sgid.pipeline import augment


def test_demo_folder_uses_bundled_photos(tmp_path: Path) -> None:
    root = build_demo_folder(tmp_path / "demo")
    assert sorted(p.name for p in root.iterdir()) == sorted(DEMO_IMAGES)
    assert len(list(root.rglob("*.png"))) == 9  # the stereo motorcycle gives two photos


def test_demo_runs_and_writes_a_self_contained_page(tmp_path: Path, cache_dir: Path) -> None:
    index = run_demo(tmp_path / "demo", multiplier=1, steps=2, quiet=True, cache_dir=cache_dir)
    page = index.read_text()
    rows = [json.loads(line) for line in (tmp_path / "demo" / "augmented" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 9
    assert page.count("<figure>") == 9 * 2  # each original beside its augmentation
    assert "random-weight" in page and 'src="http' not in page and page.count("data:image/png;base64,") == 18
    for row in rows:
        assert html.escape(row["prompt"]) in page and f"{row['guidance_scale']:.3f}" in page


def test_demo_resumes_its_own_folder_but_never_replaces_a_users_page_or_dataset(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Found by a hostile-input run: a folder holding only a user's index.html (replaced) or an input/ with the
    user's own classes (the demo photos were added to it and the user's images augmented) passed as a demo."""
    from sgid.demo import is_demo_output

    options = {"multiplier": 1, "steps": 2, "quiet": True, "cache_dir": cache_dir}
    run_demo(tmp_path / "demo", **options)
    assert is_demo_output(tmp_path / "demo")
    run_demo(tmp_path / "demo", **options)  # a rerun resumes
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("<title>my page</title>")
    dataset = tmp_path / "data"
    make_image_folder(dataset / "input", {"cat": 1, "zebra": 1})
    for folder in (mine, dataset):
        assert not is_demo_output(folder)
        with pytest.raises(SgidError, match="holds no sgid demo output"):
            run_demo(folder, **options)
    assert (mine / "index.html").read_text() == "<title>my page</title>"
    assert sorted(p.name for p in (dataset / "input").iterdir()) == ["cat", "zebra"]


def test_gallery_escapes_every_text(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"x": 1})
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"x": "<script>alert(1)</script>"}))
    augment(source, tmp_path / "out", label_names=names, cache_dir=cache_dir, **FAST)
    page = render_gallery(tmp_path / "out", source, title="<b>t</b>", note="<i>n</i>")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>t</b>" not in page and "<i>n</i>" not in page
