"""A persistent cache of captions and similarities (SQLite, one file, safe across processes and kill -9).

Keys are content hashes: the image's sha256, the model's identity and every decoding setting that changes the
result. A second run with other generation settings (noise, steps, prompt, weights) reuses them all.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sgid.progress import warn

_TABLES = ("captions", "similarities")


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class Cache:
    """``Cache(path)`` persists to ``path``; ``Cache(None)`` keeps nothing (``--no-cache``); ``readonly`` reads
    what is there and writes nothing, not even a new file (``--dry-run``)."""

    def __init__(self, path: Path | None, *, readonly: bool = False) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.readonly = readonly
        self.hits = 0
        self.misses = 0
        self.writable = not readonly
        if path is not None and readonly:
            if path.is_file():
                try:
                    self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60, isolation_level=None)
                except sqlite3.DatabaseError as exc:
                    warn(f"the cache {path} cannot be used ({exc}); going on without it")
        elif path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), timeout=60, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                for table in _TABLES:
                    self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            except (OSError, sqlite3.DatabaseError) as exc:  # a full disk, a damaged or foreign file
                warn(f"the cache {path} cannot be used ({exc}); going on without it")
                self.close()

    def get_many(self, table: str, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(keys)
        found: dict[str, Any] = {}
        if self._db is not None and keys:
            assert table in _TABLES
            try:
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = self._db.execute(f"SELECT key, value FROM {table} WHERE key IN ({marks})", chunk)
                    found.update((key, json.loads(value)) for key, value in rows)
            except sqlite3.OperationalError as exc:
                if not self.readonly:
                    warn(f"the cache {self.path} cannot be read ({exc}); going on without it")
                    self.close()
                found.clear()  # read-only: the table was never made
            except (sqlite3.DatabaseError, ValueError) as exc:  # damaged since it was opened
                warn(f"the cache {self.path} cannot be read ({exc}); going on without it")
                self.close()
                found.clear()
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def put_many(self, table: str, items: dict[str, Any]) -> None:
        """Store all items in one transaction: after a crash either all of them are there or none.

        A cache that cannot be written (its disk is full, its file is read-only) is a warning, not a failure:
        the run goes on without storing what it computes. A ``readonly`` cache stores nothing."""
        if self._db is None or not items or not self.writable:
            return
        assert table in _TABLES
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in items.items()],
                )
        except sqlite3.OperationalError as exc:  # "database or disk is full", "attempt to write a readonly ..."
            self.writable = False
            warn(f"the cache {self.path} cannot be written ({exc}); going on without storing captions")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None
