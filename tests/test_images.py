"""Every kind of awkward input image is either converted and used, or refused with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import noise_image
from sgid.dataset import default_label, read_label_names, scan
from sgid.errors import SgidError
from sgid.images import ImageError, generation_size, load_rgb


def save(path: Path, image: Image.Image, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("gray.png", lambda: noise_image(1).convert("L")),
        ("rgba.png", lambda: noise_image(1).convert("RGBA")),
        ("la.png", lambda: noise_image(1).convert("LA")),
        ("palette.png", lambda: noise_image(1).convert("P")),
        ("cmyk.jpg", lambda: noise_image(1).convert("CMYK")),
        ("binary.png", lambda: noise_image(1).convert("1")),
        ("rgb.webp", lambda: noise_image(1)),
        ("rgb.bmp", lambda: noise_image(1)),
    ],
)
def test_modes_are_converted_to_rgb(tmp_path: Path, name: str, make) -> None:  # type: ignore[no-untyped-def]
    loaded = load_rgb(save(tmp_path / name, make()))
    assert loaded.image.mode == "RGB" and loaded.image.size == (32, 32)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    loaded = load_rgb(save(tmp_path / "clear.png", image))
    assert loaded.image.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.info["transparency"] = 0
    loaded = load_rgb(save(tmp_path / "p.png", image, transparency=0))
    assert loaded.image.getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_is_rescaled_not_clipped(tmp_path: Path) -> None:
    array = np.full((16, 16), 32768, dtype=np.uint16)
    loaded = load_rgb(save(tmp_path / "deep.png", Image.fromarray(array)))
    assert loaded.image.getpixel((0, 0)) == (128, 128, 128)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = noise_image(1, (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    loaded = load_rgb(save(tmp_path / "rotated.jpg", image, exif=exif))
    assert loaded.image.size == (20, 40)


def test_sha256_is_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = save(tmp_path / "a.png", noise_image(2))
    assert load_rgb(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def truncated(tmp_path: Path) -> Path:
    path = save(tmp_path / "t.jpg", noise_image(1, (64, 64)), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def bomb(tmp_path: Path) -> Path:
    return save(tmp_path / "bomb.png", Image.new("1", (12000, 12000)))  # 144 Mpx, a few kB on disk


def empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    return path


def not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "fake.jpg"
    path.write_text("this is text")
    return path


def unreadable(tmp_path: Path) -> Path:
    path = tmp_path / "gone.png"
    os.symlink(tmp_path / "missing-target.png", path)
    return path


def one_pixel(tmp_path: Path) -> Path:
    return save(tmp_path / "dot.png", Image.new("RGB", (1, 1)))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (truncated, "truncated"),
        (bomb, "too large"),
        (empty, "empty file"),
        (not_an_image, "not an image"),
        (unreadable, "unreadable"),
        (one_pixel, "too small: 1x1"),
    ],
)
def test_unusable_images_raise_with_a_reason(tmp_path: Path, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageError, match=reason):
        load_rgb(make(tmp_path))


def test_large_images_within_the_limit_are_used(tmp_path: Path) -> None:
    path = save(tmp_path / "big.png", Image.new("RGB", (4000, 3000), (10, 20, 30)))
    assert load_rgb(path).image.size == (4000, 3000)
    with pytest.raises(ImageError, match="raise --max-pixels"):
        load_rgb(path, max_pixels=1_000_000)


@pytest.mark.parametrize(
    ("size", "resolution", "expected"),
    [
        ((32, 32), 512, (512, 512)),  # small images are upscaled to the model's resolution
        ((640, 480), 512, (680, 512)),  # aspect ratio kept, multiple of 8
        ((2048, 2048), 512, (512, 512)),  # large images are brought down, never run at 2048
        ((4000, 100), 512, (1024, 24)),  # extreme panoramas are capped at twice the resolution
        ((16, 8), 32, (64, 32)),
    ],
)
def test_generation_size(size, resolution, expected) -> None:  # type: ignore[no-untyped-def]
    assert generation_size(size, resolution) == expected


def test_scan_lists_classes_ignores_hidden_files_and_lists_root_files(tmp_path: Path) -> None:
    (tmp_path / "golden_retriever" / "nested").mkdir(parents=True)
    (tmp_path / "cat").mkdir()
    (tmp_path / ".hidden_class").mkdir()
    save(tmp_path / "cat" / "1.png", noise_image(1))
    save(tmp_path / "golden_retriever" / "nested" / "2.png", noise_image(2))
    save(tmp_path / "cat" / ".3.png", noise_image(3))
    save(tmp_path / "root.png", noise_image(4))
    (tmp_path / "cat" / "notes.txt").write_text("x")
    listing = scan(tmp_path)
    assert [s.relpath for s in listing.sources] == ["cat/1.png", "golden_retriever/nested/2.png"]
    assert listing.labels == {"cat": "cat", "golden_retriever": "golden retriever"}
    assert listing.skipped == (
        ("cat/notes.txt", "not an image file (extension '.txt')"),
        ("root.png", "a file outside any class folder; not used"),
    )


def test_label_names_files(tmp_path: Path) -> None:
    (tmp_path / "json.json").write_text('{"n01": "tench"}')
    (tmp_path / "names.csv").write_text("folder,label\nn01,tench\nn02,goldfish\n")
    assert read_label_names(tmp_path / "json.json") == {"n01": "tench"}
    assert read_label_names(tmp_path / "names.csv") == {"n01": "tench", "n02": "goldfish"}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SgidError, match="JSON object"):
        read_label_names(tmp_path / "bad.json")
    # what would quietly change a prompt is refused, naming the row
    (tmp_path / "comma.csv").write_text("n01,tabby cat, striped\n")
    with pytest.raises(SgidError, match=r"row 1: expected 'folder,label', got 3 column\(s\); quote a label"):
        read_label_names(tmp_path / "comma.csv")
    (tmp_path / "blank.csv").write_text("n01,tench\nn02, \n")
    with pytest.raises(SgidError, match="row 2: the label of 'n02' is empty"):
        read_label_names(tmp_path / "blank.csv")
    (tmp_path / "blank.json").write_text('{"n01": ""}')
    with pytest.raises(SgidError, match="the label of 'n01' is empty"):
        read_label_names(tmp_path / "blank.json")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(SgidError, match="folder.json is a folder"):
        read_label_names(tmp_path / "folder.json")
    assert default_label("Chevrolet_Silverado_1500") == "Chevrolet Silverado 1500"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "not found"),
        ("file", "not a folder"),
        ("flat", "no class folders"),
        ("emptyclass", "no image files"),
    ],
)
def test_scan_errors(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "flat":
        root.mkdir()
        save(root / "a.png", noise_image(1))
    elif layout == "emptyclass":
        (root / "cat").mkdir(parents=True)
    with pytest.raises(SgidError, match=message):
        scan(root)
