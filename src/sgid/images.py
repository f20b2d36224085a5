"""Reading, normalising and resizing images: pure functions, no models.

Every input image goes through :func:`load_rgb`, which either returns an 8-bit RGB image (converting grayscale,
palette, RGBA, CMYK, 16-bit and EXIF-rotated images) or raises :class:`ImageError` with a one-line reason that
ends up in ``errors.jsonl``.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: File extensions treated as images (torchvision's ``IMG_EXTENSIONS`` plus a few more Pillow reads).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".jfif", ".pbm"}
)

#: Pillow's own decompression-bomb threshold; larger images are refused, not decoded.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageError(Exception):
    """An input image that cannot be used; the message is the reason recorded in errors.jsonl."""


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # 8-bit RGB
    sha256: str  # of the file's bytes
    original_mode: str
    original_size: tuple[int, int]  # (width, height) after EXIF rotation


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_rgb(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 8) -> LoadedImage:
    """Read ``path`` into an 8-bit RGB image or raise :class:`ImageError` saying why not."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"unreadable file: {exc.strerror or exc}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    digest = sha256_bytes(data)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the authority; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"image too large: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                        f"{max_pixels:,} (possible decompression bomb; raise --max-pixels to allow it)"
                    )
                mode = opened.mode
                opened.load()
                image = ImageOps.exif_transpose(opened)
                image = to_rgb8(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large (possible decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # a malformed file can fail inside a decoder in other ways (struct.error, IndexError …)
        raise ImageError(f"corrupt image ({type(exc).__name__}: {exc})") from None
    if min(image.size) < min_side:
        raise ImageError(
            f"image too small: {image.width}x{image.height}; both sides must be at least {min_side} pixels"
        )
    return LoadedImage(image=image, sha256=digest, original_mode=mode, original_size=image.size)


def probe_size(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 8) -> tuple[int, int]:
    """The (width, height) :func:`load_rgb` would give (EXIF rotation applied), read from the file's header
    where the format allows; :class:`ImageError` with load_rgb's reason when the file is not usable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                orientation = opened.getexif().get(EXIF_ORIENTATION) if width * height <= max_pixels else None
    except Exception:  # any failure: let the full reader say why, in its own words
        load_rgb(path, max_pixels=max_pixels, min_side=min_side)
        raise ImageError("not an image Pillow can read") from None
    if width * height > max_pixels or min(width, height) < min_side:
        load_rgb(path, max_pixels=max_pixels, min_side=min_side)  # raises with the reason
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


EXIF_ORIENTATION = 0x0112  # ImageOps.exif_transpose swaps the sides for orientations 5 to 8


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white and rescaling 16-bit data."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: rescale the full range instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        finite = array[np.isfinite(array)]
        top = 1.0 if finite.size == 0 or finite.max() <= 1.0 else 255.0
        array = np.nan_to_num(array, nan=0.0, posinf=top, neginf=0.0)  # NaN black, infinities at the ends
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def generation_size(size: tuple[int, int], resolution: int, multiple: int = 8) -> tuple[int, int]:
    """The (width, height) to generate at: aspect ratio kept, shorter side = ``resolution``.

    The longer side is capped at twice the resolution (a 10:1 panorama is generated at 2:1 of the model's size,
    its short side shrinking accordingly), and both sides are rounded to a multiple of ``multiple`` (the VAE's
    downsampling factor) so no pixels are cropped by the pipeline.

    >>> generation_size((32, 32), 512)
    (512, 512)
    >>> generation_size((640, 480), 512)
    (680, 512)
    >>> generation_size((4000, 100), 512)
    (1024, 24)
    """
    width, height = size
    scale = resolution / min(width, height)
    scale = min(scale, 2 * resolution / max(width, height))
    return (_round_to(width * scale, multiple), _round_to(height * scale, multiple))


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps or text chunks)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
