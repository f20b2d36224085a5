"""Image features by file, extracted once in batches and cached on disk.

:class:`FeatureStore` turns file paths into features. The key of a cached vector is the sha256 of the image
file's bytes plus the extractor identity, so the same images filtered twice, or filtered and then measured,
are read from ``<cache dir>/features.sqlite`` instead of being run through the model again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sgid.errors import SgidError
from sgid.features.extractors import FeatureExtractor
from sgid.images import ImageError, load_rgb, sha256_bytes
from sgid.progress import bar
from sgid.sqlitecache import SqliteCache

FEATURE_CACHE_FILE = "features.sqlite"
_TABLE = (
    "features (extractor TEXT NOT NULL, sha256 TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL, "
    "PRIMARY KEY (extractor, sha256))"
)


class FeatureCache(SqliteCache):
    """Vectors by (extractor identity, image sha256) in SQLite: one file, safe across processes and kill -9.

    ``FeatureCache(None)`` keeps nothing (``--no-cache``); a file that cannot be read or written is a warning
    (:mod:`sgid.sqlitecache`).
    """

    def __init__(self, path: Path | None) -> None:
        super().__init__(path, [_TABLE], stored="features")

    def get_many(self, extractor: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        return self.lookup(
            "SELECT sha256, dim, vector FROM features WHERE extractor = ? AND sha256 IN ({marks})",
            list(dict.fromkeys(hashes)),
            _vector_row,
            params=[extractor],
        )

    def put_many(self, extractor: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store all in one transaction: after a crash either all of them are there or none."""
        self.store(
            "INSERT OR REPLACE INTO features (extractor, sha256, dim, vector) VALUES (?, ?, ?, ?)",
            (
                (extractor, sha, int(v.shape[0]), np.ascontiguousarray(v, np.float32).tobytes())
                for sha, v in vectors.items()
            ),
        )


def _vector_row(row: tuple[Any, ...]) -> tuple[str, np.ndarray] | None:
    sha, dim, blob = row
    vector = np.frombuffer(blob, dtype=np.float32)
    return (sha, vector) if vector.shape[0] == dim else None


class FeatureStore:
    """Paths to features: hash each file, serve known hashes from memory or the cache, extract the rest in
    batches of ``batch_size`` and cache them. ``computed`` / ``reused`` count distinct images (reports)."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        cache: FeatureCache | None = None,
        *,
        batch_size: int = 32,
        quiet: bool = True,
        label: str = "features",
    ) -> None:
        self.extractor = extractor
        self.cache = cache or FeatureCache(None)
        self.batch_size = batch_size
        self.quiet = quiet
        self.label = label
        self._memo: dict[str, np.ndarray] = {}
        self._computed: set[str] = set()  # distinct images run through the extractor by this store
        self._reused: set[str] = set()  # distinct images served from the cache instead

    @property
    def computed(self) -> int:
        return len(self._computed)

    @property
    def reused(self) -> int:
        return len(self._reused)

    @property
    def identity(self) -> str:
        return self.extractor.identity

    def __call__(self, paths: Sequence[Path]) -> np.ndarray:
        """(N, D) features; an unreadable image is a one-line error naming it."""
        features, errors = self.extract(paths)
        if errors:
            index, reason = next(iter(errors.items()))
            raise SgidError(f"cannot read image {paths[index]}: {reason}")
        return features

    def extract(self, paths: Sequence[Path]) -> tuple[np.ndarray, dict[int, str]]:
        """(N, D) features (NaN rows for unreadable images) and {index: reason} for those images."""
        errors: dict[int, str] = {}
        hashes: list[str | None] = []
        for i, path in enumerate(paths):
            try:
                hashes.append(sha256_bytes(Path(path).read_bytes()))
            except OSError as exc:
                hashes.append(None)
                errors[i] = f"unreadable file: {exc.strerror or exc}"
        wanted = [h for h in dict.fromkeys(hashes) if h is not None and h not in self._memo]
        self._memo.update(self.cache.get_many(self.identity, wanted))
        missing: dict[str, Path] = {}
        for path, sha in zip(paths, hashes, strict=True):
            if sha is not None and sha not in self._memo:
                missing.setdefault(sha, Path(path))
        errors.update(self._compute(missing, hashes))
        self._reused.update(
            h for i, h in enumerate(hashes) if h is not None and i not in errors and h not in self._computed
        )
        return self._assemble(hashes, errors), errors

    def _compute(self, missing: dict[str, Path], hashes: Sequence[str | None]) -> dict[int, str]:
        """Extract the missing features batch by batch; returns errors for images that cannot be decoded."""
        failed: dict[str, str] = {}
        items = list(missing.items())
        progress = bar(len(items), self.label, "img", self.quiet or not items)
        for start in range(0, len(items), self.batch_size):
            batch: list[tuple[str, Image.Image]] = []
            for sha, path in items[start : start + self.batch_size]:
                try:
                    batch.append((sha, load_rgb(path).image))
                except ImageError as exc:
                    failed[sha] = str(exc)
            if batch:
                vectors = self.extractor([image for _, image in batch])
                fresh = {sha: np.asarray(v, np.float32) for (sha, _), v in zip(batch, vectors, strict=True)}
                self.cache.put_many(self.identity, fresh)
                self._memo.update(fresh)
                self._computed.update(fresh)
            progress.update(len(items[start : start + self.batch_size]))
        progress.close()
        return {i: failed[h] for i, h in enumerate(hashes) if h is not None and h in failed}

    def _assemble(self, hashes: Sequence[str | None], errors: Mapping[int, str]) -> np.ndarray:
        good = [self._memo[h] for i, h in enumerate(hashes) if h is not None and i not in errors]
        dim = good[0].shape[0] if good else 0
        out = np.full((len(hashes), dim), np.nan, dtype=np.float32)
        for i, sha in enumerate(hashes):
            if sha is not None and i not in errors:
                out[i] = self._memo[sha]
        return out
