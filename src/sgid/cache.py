"""A persistent cache of captions and similarities (SQLite, one file, safe across processes and kill -9).

Keys are content hashes: the image's sha256, the model's identity and every decoding setting that changes the
result. A second run with other generation settings (noise, steps, prompt, weights) reuses them all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sgid.sqlitecache import SqliteCache

_TABLES = ("captions", "similarities")


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class Cache(SqliteCache):
    """``Cache(path)`` persists to ``path``; ``Cache(None)`` keeps nothing (``--no-cache``); ``readonly`` reads
    what is there and writes nothing, not even a new file (``--dry-run``). What cannot be read or written is a
    warning (:mod:`sgid.sqlitecache`)."""

    def __init__(self, path: Path | None, *, readonly: bool = False) -> None:
        tables = [f"{table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)" for table in _TABLES]
        super().__init__(path, tables, readonly=readonly, stored="captions")
        self.hits = 0
        self.misses = 0

    def get_many(self, table: str, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(keys)
        assert not keys or table in _TABLES
        found = self.lookup(f"SELECT key, value FROM {table} WHERE key IN ({{marks}})", keys, _json_row)
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def put_many(self, table: str, items: dict[str, Any]) -> None:
        """Store all items in one transaction: after a crash either all of them are there or none.

        A cache that cannot be written (its disk is full, its file is read-only) is a warning, not a failure:
        the run goes on without storing what it computes. A ``readonly`` cache stores nothing."""
        assert not items or table in _TABLES
        rows = ((key, json.dumps(value)) for key, value in items.items())
        self.store(f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)", rows)


def _json_row(row: tuple[Any, ...]) -> tuple[str, Any]:
    key, value = row
    return key, json.loads(value)
