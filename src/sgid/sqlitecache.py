"""One SQLite file of cached results, shared by processes: the caption cache and the image-feature cache.

The file is opened in WAL mode with a 60-second busy timeout, so concurrent readers and writers (several
commands, an engine's workers) wait for each other instead of failing; every write is one transaction (after a
crash or ``kill -9`` all of it is there or none); lookups go in chunks of 500 keys.

A cache is never a reason for a command to fail: a file that cannot be opened or read (a damaged or foreign
file, a full disk) is one warning and the command goes on without it; a file that cannot be written (its disk
is full, it is read-only) is one warning and the command goes on without storing. ``readonly`` reads an
existing file and creates nothing, not even the file (``--dry-run``); ``path=None`` keeps nothing
(``--no-cache``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sgid.progress import warn

CHUNK = 500  # keys per lookup query (SQLite's limit on parameters is 999 in old builds)
Value = TypeVar("Value")


class SqliteCache:
    """A cache file with the ``tables`` given as ``"name (columns ...)"`` (created when missing); ``stored``
    names what a write failure goes on without ("captions")."""

    def __init__(
        self, path: Path | None, tables: Sequence[str], *, readonly: bool = False, stored: str = "results"
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.writable = not readonly
        self.stored = stored
        self._db: sqlite3.Connection | None = None
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
                for table in tables:
                    self._db.execute(f"CREATE TABLE IF NOT EXISTS {table}")
            except (OSError, sqlite3.DatabaseError) as exc:  # a full disk, a damaged or foreign file
                warn(f"the cache {path} cannot be used ({exc}); going on without it")
                self.close()

    def lookup(
        self,
        select: str,
        keys: Sequence[str],
        row: Callable[[tuple[Any, ...]], tuple[str, Value] | None],
        params: Sequence[Any] = (),
    ) -> dict[str, Value]:
        """``{key: value}`` of the ``keys`` found: ``select`` holds ``{marks}`` where the keys' placeholders go
        (after ``params``), ``row`` turns a result row into (key, value), or None to pass it over. A file that
        cannot be read is a warning, and nothing is found (a read-only file without the table: silently)."""
        found: dict[str, Value] = {}
        if self._db is None or not keys:
            return found
        try:
            for start in range(0, len(keys), CHUNK):
                chunk = keys[start : start + CHUNK]
                query = select.format(marks=",".join("?" * len(chunk)))
                for result in self._db.execute(query, [*params, *chunk]):
                    item = row(result)
                    if item is not None:
                        found[item[0]] = item[1]
        except sqlite3.OperationalError as exc:
            if not self.readonly:
                self._unreadable(exc)
            found.clear()  # read-only: the table was never made
        except (sqlite3.DatabaseError, ValueError) as exc:  # damaged since it was opened
            self._unreadable(exc)
            found.clear()
        return found

    def store(self, insert: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Run ``insert`` for every row in one transaction: after a crash either all of them are there or none.
        A file that cannot be written is a warning, and nothing more is stored; a ``readonly`` cache stores
        nothing (``rows`` is then not even read)."""
        if self._db is None or not self.writable:
            return
        rows = list(rows)
        if not rows:
            return
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(insert, rows)
        except sqlite3.OperationalError as exc:  # "database or disk is full", "attempt to write a readonly ..."
            self.writable = False
            warn(f"the cache {self.path} cannot be written ({exc}); going on without storing {self.stored}")

    def _unreadable(self, exc: Exception) -> None:
        warn(f"the cache {self.path} cannot be read ({exc}); going on without it")
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None
