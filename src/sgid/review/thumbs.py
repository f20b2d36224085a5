"""Thumbnails, made once and cached on disk.

A thumbnail's file name is a hash of the image's resolved path, size on disk, modification time and the
thumbnail size, so an image that changes gets a new thumbnail and an unchanged one is never decoded again.
Files are written to a temporary name and renamed into place, so two requests making the same thumbnail at once
both end with a whole file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from PIL import Image

from sgid.images import load_rgb

THUMBNAIL_SIZE = 256


class Thumbnails:
    def __init__(self, folder: str | Path, size: int = THUMBNAIL_SIZE) -> None:
        self.folder = Path(folder)
        self.size = size
        self.made = 0  # thumbnails made by this process (the rest came from the cache)
        self._lock = threading.Lock()

    def key(self, image: Path) -> str:
        stat = image.stat()
        text = f"{os.path.realpath(image)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.size}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    def get(self, image: Path) -> Path:
        """The cached thumbnail of ``image`` (a JPEG), made now if it is not cached yet."""
        key = self.key(image)
        path = self.folder / key[:2] / f"{key}.jpg"
        if path.is_file():
            return path
        picture = load_rgb(image).image  # ImageError (a one-line reason) when it cannot be read
        picture.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            picture.save(tmp, format="JPEG", quality=85)
            os.replace(tmp, path)
        except BaseException:  # a full disk: no half-written file is left behind
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            self.made += 1
        return path
