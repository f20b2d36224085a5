"""``--dry-run``: what a run would do and an estimate of its time, with nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import FAST, make_image_folder
from sgid.cli import main
from sgid.pipeline import augment


def state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file (hidden ones too) with its bytes and modification time."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def fresh_cache(tmp_path: Path, cache_dir: Path, tiny) -> Path:  # type: ignore[no-untyped-def]
    """A cache folder holding only the tiny models (no captions), so nothing is cached."""
    from sgid.models.tiny import tiny_root

    fresh = tmp_path / "cache"
    tiny = tiny_root(cache_dir)
    (fresh / tiny.relative_to(cache_dir)).parent.mkdir(parents=True)
    os.symlink(tiny, fresh / tiny.relative_to(cache_dir))
    return fresh


def test_a_dry_run_counts_the_work_and_writes_nothing(tmp_path: Path, fresh_cache: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 3, "b": 3})
    (source / "a" / "broken.png").write_bytes(b"not an image")
    before = set(fresh_cache.rglob("*"))
    report = augment(source, tmp_path / "out", multiplier=2, dry_run=True, cache_dir=fresh_cache, **FAST)
    assert not (tmp_path / "out").exists() and set(fresh_cache.rglob("*")) == before
    assert (report.sources, report.unusable, report.images, report.done, report.to_make) == (6, 1, 12, 0, 12)
    assert report.to_caption == 6  # nothing in the cache
    assert report.unet_evaluations == 12 * int(4 * 0.5) * 2  # items x denoising steps x 2 for guidance
    assert report.seconds is not None and report.seconds > 0
    text = "\n".join(report.lines())
    assert "12 images to make" in text and "48 UNet evaluations" in text and "≈" in text


def test_a_dry_run_after_a_partial_run_counts_what_is_done_and_changes_nothing(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 2, "b": 2})
    out = tmp_path / "out"
    augment(source, out, multiplier=2, cache_dir=cache_dir, **FAST)
    for name in ("a/0_sgid_1.png", "b/1_sgid_0.png"):
        (out / name).unlink()  # not done any more
    before = state(out)
    report = augment(source, out, multiplier=2, dry_run=True, batch_size=2, cache_dir=cache_dir, **FAST)
    assert state(out) == before
    assert (report.images, report.done, report.to_make, report.to_caption) == (8, 6, 2, 0)  # captions cached
    assert report.unet_evaluations == 2 * 2 * 2
    finished = augment(source, out, multiplier=2, cache_dir=cache_dir, **FAST)
    assert finished.generated == report.to_make


def test_the_dry_run_command_prints_the_estimate_and_exits_0(
    tmp_path: Path, image_folder: Path, fresh_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--models", "tiny", "--steps", "4", "--cache-dir", str(fresh_cache), "--dry-run"]
    code = main(["augment", str(image_folder), "--out", str(tmp_path / "out"), *flags])
    out = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "out").exists()
    assert "6 images to make, 0 already done" in out and "estimated time" in out and "on 8 workers" in out


def test_a_chain_is_estimated_by_its_first_method(tmp_path: Path, image_folder: Path, cache_dir: Path) -> None:
    report = augment(image_folder, tmp_path / "out", method="text2img+sgid", dry_run=True, cache_dir=cache_dir, **FAST)
    assert report.out_dir == tmp_path / "out.stages" / "1-text2img" and report.to_make == 6
    assert report.to_caption == 0 and report.steps == 4  # text-to-image: every step, no captions
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.stages").exists()


def test_a_method_without_a_diffusion_model_counts_no_unet_evaluations(  # type: ignore[no-untyped-def]
    tmp_path: Path, image_folder: Path, cache_dir: Path
) -> None:
    """Found by a hostile-input run: randaugment's dry run counted 1,800 UNet evaluations."""
    report = augment(image_folder, tmp_path / "out", method="randaugment", dry_run=True, cache_dir=cache_dir)
    assert report.steps == 0 and report.unet_evaluations == 0 and report.to_make == 6
    assert "no UNet evaluations (this method runs no diffusion model)" in report.lines()
    assert report.generation_seconds is not None and report.seconds is not None  # still timed: made on the CPU
