"""Input folders made by someone else (docs/reliability.md, "Input folders").

Symbolic links are followed wherever they point, and a folder reached twice (a loop, two links to one folder) is
listed once; broken links, FIFOs, files outside class folders, unreadable folders and files are listed with their
reason; names that are not UTF-8 get a portable name (``%XX``) that maps back to the file; names with newlines or
leading dashes are used as they are; very long names give output names that fit; listing streams with a count.
Everything under the input is used or listed in errors.jsonl.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import sgid.dataset
from conftest import noise_image
from sgid.dataset import locate, portable_name, scan
from sgid.images import ImageError, load_rgb
from sgid.manifest import read_run
from sgid.pipeline import MAX_STEM_BYTES, augment
from sgid.rundir import check_sources, read_run_dir

FAST: dict[str, Any] = {"models": "tiny", "steps": 4, "multiplier": 1, "batch_size": 4, "quiet": True}
LATIN1 = os.fsdecode(b"na\xefve.png")  # "naïve.png" in Latin-1: not UTF-8
COLLIDING = os.fsdecode(b"caf\xe9.png")  # portable name "caf%E9.png", which another file has
ODD_CLASS = os.fsdecode(b"\xffclass")
LONG = "x" * 246 + ".png"  # 250 bytes: the longest names a file system allows are near 255


def image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(seed).save(path, format="PNG")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An input folder with everything a user's folder may hold; ``outside/`` lies next to it."""
    base = tmp_path_factory.mktemp("hostile-tree")
    root, outside = base / "in", base / "outside"
    image(outside / "o.png", 1)
    image(outside / "dog" / "d.png", 2)
    image(root / "cat" / "1.png", 3)
    os.symlink(outside / "o.png", root / "cat" / "link-out.png")  # a file outside the input: followed
    os.symlink(outside / "dog", root / "dog")  # a class folder outside the input: followed
    os.symlink("../dog", root / "cat" / "again")  # the dog folder a second time: listed once
    os.symlink("..", root / "cat" / "loop")  # back to the input folder: a loop
    os.symlink("self", root / "cat" / "self")  # a link to itself
    os.symlink("missing.png", root / "cat" / "broken.png")
    os.mkfifo(root / "cat" / "pipe.png")  # opening it would block forever
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("outside any class folder")
    (root / "cat" / ".DS_Store").write_bytes(b"hidden: ignored")
    image(root / "cat" / LATIN1, 4)
    image(root / "cat" / "caf%E9.png", 11)
    image(root / "cat" / COLLIDING, 12)
    image(root / "cat" / "new\nline.png", 5)
    image(root / "cat" / "-rf.png", 6)
    image(root / "cat" / "--help.png", 7)
    image(root / ODD_CLASS / "x.png", 8)
    image(root / "cat" / LONG, 9)
    deep = root / "cat" / ("d" * 120) / ("e" * 120)
    image(deep / LONG, 10)  # flattened into one name: 500 bytes
    return root


def test_symlinks_loops_and_special_files_are_used_or_listed(tree: Path) -> None:
    listing = scan(tree)
    relpaths = [s.relpath for s in listing.sources]
    assert {"cat/1.png", "cat/link-out.png", "dog/d.png"} <= set(relpaths)
    skipped = dict(listing.skipped)
    assert skipped["cat/again/"] == "the same folder as dog/ (reached through a symbolic link); listed once"
    assert skipped["cat/loop/"] == "a symbolic link loop back to the input folder; not followed"
    assert skipped["cat/self"] == "a symbolic link loop (the link leads back to itself); not followed"
    assert skipped["cat/broken.png"] == "a broken symbolic link (its target does not exist)"
    assert skipped["cat/pipe.png"] == "not a regular file (a FIFO); never opened"
    assert skipped["cat/notes.txt"] == "not an image file (extension '.txt')"
    assert skipped["README.md"] == "a file outside any class folder; not used"
    assert not any(".DS_Store" in r for r in [*relpaths, *skipped])  # hidden names are ignored, by convention


def test_names_that_are_not_utf8_get_a_portable_name_that_finds_the_file(tree: Path) -> None:
    listing = scan(tree)
    by_relpath = {s.relpath: s for s in listing.sources}
    assert portable_name(ODD_CLASS) == "%FFclass" and "%FFclass" in listing.classes
    latin = by_relpath["cat/na%EFve.png"]
    assert latin.path.name == LATIN1 and locate(tree, "cat/na%EFve.png") == latin.path
    assert locate(tree, "%FFclass/x.png") == tree / ODD_CLASS / "x.png"
    assert locate(tree, "cat/caf%E9.png") == by_relpath["cat/caf%E9.png"].path == tree / "cat" / "caf%E9.png"
    assert dict(listing.skipped)["cat/caf\\xe9.png"] == (
        "its name is not UTF-8, and written as 'caf%E9.png' it is another file's name; rename one of them"
    )
    assert {"cat/new\nline.png", "cat/-rf.png", "cat/--help.png", f"cat/{LONG}"} <= set(by_relpath)


@pytest.fixture(scope="module")
def hostile_run(tree: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("hostile-run") / "out"
    augment(tree, out, cache_dir=cache_dir, **FAST)
    return out


def test_a_run_on_a_hostile_tree_uses_or_lists_every_entry(hostile_run: Path) -> None:
    run = read_run(hostile_run)
    deep = f"cat/{'d' * 120}/{'e' * 120}/{LONG}"
    used = ["%FFclass/x.png", "cat/--help.png", "cat/-rf.png", "cat/1.png", "cat/caf%E9.png", "cat/link-out.png"]
    used += ["cat/na%EFve.png", "cat/new\nline.png", f"cat/{LONG}", deep, "dog/d.png"]
    assert [row.source for row in run.rows] == sorted(used)
    listed = ["README.md", "cat/again/", "cat/broken.png", "cat/caf\\xe9.png", "cat/loop/", "cat/notes.txt"]
    listed += ["cat/pipe.png", "cat/self"]
    assert [e.source for e in run.errors] == listed
    assert run.unusable_sources.isdisjoint(used)


def test_every_file_sgid_writes_has_a_valid_utf8_name_and_content_and_fits(hostile_run: Path) -> None:
    for path in hostile_run.rglob("*"):
        os.fsencode(path.name).decode("utf-8")  # raises for a name that is not UTF-8
        assert len(os.fsencode(path.name)) <= MAX_STEM_BYTES + 20
    for name in ("metadata.jsonl", "errors.jsonl"):
        text = (hostile_run / name).read_bytes().decode("utf-8")  # strict
        assert "\\ud" not in text  # no surrogate escapes: other tools' JSON readers accept every line
    pyarrow_json = pytest.importorskip("pyarrow.json")
    table = pyarrow_json.read_json(hostile_run / "metadata.jsonl")
    assert table.num_rows == len(read_run(hostile_run).rows)


def test_later_commands_find_the_sources_of_a_hostile_run_again(tree: Path, hostile_run: Path, cache_dir: Path) -> None:
    run = read_run_dir(hostile_run)
    check_sources(run.entries)  # every source found (through locate) and byte-identical
    long_rows = [e for e in run.entries if e.source and LONG in e.source]
    assert len(long_rows) == 2 and len({e.file_name for e in long_rows}) == 2
    again = augment(tree, hostile_run, cache_dir=cache_dir, **FAST)
    assert again.generated == 0  # resumes to the same names: nothing made twice


def test_a_path_longer_than_the_system_allows_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "in"
    image(root / "cat" / "1.png")
    fd = os.open(root / "cat", os.O_RDONLY)
    try:
        for _ in range(20):  # 20 x 250 bytes: beyond PATH_MAX (4096)
            os.mkdir("d" * 249, dir_fd=fd)
            fd, previous = os.open("d" * 249, os.O_RDONLY, dir_fd=fd), fd
            os.close(previous)
    finally:
        os.close(fd)
    listing = scan(root)
    assert [s.relpath for s in listing.sources] == ["cat/1.png"]
    assert any(reason.startswith("unreadable folder: File name too long") for _, reason in listing.skipped)


@contextmanager
def unprivileged() -> Iterator[None]:
    """Permissions do not stop root: as root, act as user nobody for the block (the effective ids only)."""
    if os.geteuid() != 0:
        yield
        return
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_folders_and_files_that_cannot_be_read_are_listed() -> None:
    base = Path(tempfile.mkdtemp(prefix="sgid-permissions-"))  # not under pytest's private (0700) folder
    os.chmod(base, 0o755)
    root = base / "in"
    image(root / "cat" / "1.png")
    image(root / "cat" / "secret.png")
    image(root / "locked" / "2.png")
    os.chmod(root / "cat" / "secret.png", 0)
    os.chmod(root / "locked", 0)
    try:
        with unprivileged():
            listing = scan(root)
            reasons = {}
            for source in listing.sources:
                try:
                    load_rgb(source.path)
                except ImageError as exc:
                    reasons[source.relpath] = str(exc)
        assert dict(listing.skipped)["locked/"] == "unreadable folder: Permission denied"
        assert reasons == {"cat/secret.png": "unreadable file: Permission denied"}
    finally:
        os.chmod(root / "locked", 0o755)
        shutil.rmtree(base)


def make_flat_tree(root: Path, classes: int, per_class: int) -> int:
    """``classes`` folders of ``per_class`` empty .png files: listing never opens them."""
    for c in range(classes):
        folder = root / f"class{c:03d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            os.close(os.open(folder / f"{i:06d}.png", os.O_CREAT | os.O_WRONLY, 0o644))
    return classes * per_class


def listing_peak(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(images listed, peak bytes traced while listing); the count is shown at once (not after a second)."""
    monkeypatch.setattr(sgid.dataset, "counter", functools.partial(sgid.dataset.counter, delay=0))
    tracemalloc.start()
    try:
        listing = scan(root, progress=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return len(listing.sources), peak


def test_listing_streams_and_shows_a_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    total = make_flat_tree(tmp_path / "in", classes=2, per_class=1_000)
    listed, peak = listing_peak(tmp_path / "in", monkeypatch)
    assert listed == total
    assert peak < 1_500 * total  # about a kilobyte per file: paths only, nothing read
    assert f"listing the input: {total + 2} entries" in capsys.readouterr().err


@pytest.mark.slow
def test_a_hundred_thousand_files_are_listed_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10 class folders of 10,000 files: the same memory per file as a small tree."""
    total = make_flat_tree(tmp_path / "in", classes=10, per_class=10_000)
    listed, peak = listing_peak(tmp_path / "in", monkeypatch)
    assert listed == total and peak < 1_500 * total
