"""The review database (SQLite): decisions, best-of-K picks, studies and ratings.

Every write is one short transaction (``BEGIN IMMEDIATE``: writers queue on the database lock, readers never
block in WAL mode) that also appends the change to ``events``, an append-only log, so two browser tabs or two
annotators never lose a click: each decision, pick and rating is its own row keyed by who made it, and a later
click by the same person replaces only their own value (the earlier one stays in ``events``).

Tables::

    decisions  (run, file_name, reviewer) -> accept | reject            per-image selection
    best       (run, source, reviewer)    -> file_name                   per-original best of K
    studies    id -> settings (runs, methods, labels, originals, seed)   a blinded rating study
    study_items (study, item) -> label, source                           the sampled originals, in order
    study_images (study, item, position) -> method, run, file_name       one augmentation per method, shuffled
    ratings    (study, annotator, item, position, scale) -> value 1..5, method, time
    events     every write, in order

``run`` is a run's identity (its run.json ``identity_sha256``; the folder path when it has none), so decisions
follow a run that is moved.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgid.errors import SgidError

SCHEMA_VERSION = "1"
DECISIONS = ("accept", "reject")
SCALES = ("consistency", "diversity")
NAME_LIMIT = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (run TEXT PRIMARY KEY, path TEXT NOT NULL, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    run TEXT NOT NULL, file_name TEXT NOT NULL, reviewer TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject')), time REAL NOT NULL,
    PRIMARY KEY (run, file_name, reviewer));
CREATE TABLE IF NOT EXISTS best (
    run TEXT NOT NULL, source TEXT NOT NULL, reviewer TEXT NOT NULL, file_name TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (run, source, reviewer));
CREATE TABLE IF NOT EXISTS studies (id TEXT PRIMARY KEY, settings TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS study_items (
    study TEXT NOT NULL, item INTEGER NOT NULL, label TEXT NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (study, item));
CREATE TABLE IF NOT EXISTS study_images (
    study TEXT NOT NULL, item INTEGER NOT NULL, position INTEGER NOT NULL,
    method TEXT NOT NULL, run TEXT NOT NULL, file_name TEXT NOT NULL,
    PRIMARY KEY (study, item, position));
CREATE TABLE IF NOT EXISTS ratings (
    study TEXT NOT NULL, annotator TEXT NOT NULL, item INTEGER NOT NULL, position INTEGER NOT NULL,
    scale TEXT NOT NULL CHECK (scale IN ('consistency', 'diversity')),
    value INTEGER NOT NULL CHECK (value BETWEEN 1 AND 5), method TEXT NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (study, annotator, item, position, scale));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, who TEXT NOT NULL, kind TEXT NOT NULL,
    data TEXT NOT NULL);
"""


def check_name(name: Any, what: str = "name") -> str:
    """A reviewer's or annotator's name: 1 to 64 printable characters, spaces trimmed."""
    if not isinstance(name, str) or not name.strip():
        raise SgidError(f"a {what} is needed")
    name = " ".join(name.split())
    if len(name) > NAME_LIMIT or not name.isprintable():
        raise SgidError(f"a {what} must be at most {NAME_LIMIT} printable characters")
    return name


@dataclass(frozen=True)
class Decision:
    run: str
    file_name: str
    reviewer: str
    decision: str
    time: float


@dataclass(frozen=True)
class Pick:
    run: str
    source: str
    reviewer: str
    file_name: str
    time: float


@dataclass(frozen=True)
class Rating:
    study: str
    annotator: str
    item: int
    position: int
    scale: str
    value: int
    method: str
    time: float


class ReviewDB:
    """One database file; safe to share between threads (one connection per thread) and processes."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise SgidError(f"review database not found: {self.path}")
        if create:
            if self.path.exists() and not self.path.is_file():
                raise SgidError(f"--db {self.path} is not a file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        if create and self.path.is_file() and self.path.stat().st_size > 0:
            self._check_foreign()  # before any write: another program's database is never changed
        try:
            with self.write() as db:
                if create:
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                found = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError as exc:  # locked, read-only, cannot be opened: not a question of content
            raise SgidError(f"cannot use the review database {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise SgidError(f"{self.path} is not an sgid review database ({exc})") from None
        if found is None or found[0] != SCHEMA_VERSION:
            raise SgidError(f"{self.path} is not an sgid review database of schema {SCHEMA_VERSION}")

    def _check_foreign(self) -> None:
        """Refuse an existing SQLite file that holds tables and no sgid schema, reading it only."""
        try:
            reader = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                tables = [row[0] for row in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            finally:
                reader.close()
        except sqlite3.OperationalError as exc:
            raise SgidError(f"cannot use the review database {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise SgidError(f"{self.path} is not an sgid review database ({exc})") from None
        if tables and "meta" not in tables:
            names = ", ".join(sorted(tables)[:5])
            raise SgidError(
                f"{self.path} is another program's SQLite database (tables {names}), not an sgid review database; "
                f"choose another --db (sgid never writes into it)"
            )

    # -- connections and transactions --------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            connection.execute("PRAGMA busy_timeout = 30000")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
        return connection

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything in the block is committed together or not at all."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @staticmethod
    def _event(db: sqlite3.Connection, who: str, kind: str, **data: Any) -> None:
        db.execute(
            "INSERT INTO events (time, who, kind, data) VALUES (?, ?, ?, ?)",
            (time.time(), who, kind, json.dumps(data, sort_keys=True)),
        )

    # -- runs --------------------------------------------------------------------------------------------
    def register_runs(self, runs: Sequence[tuple[str, str, str]]) -> None:
        """Remember (identity, path, name) of the runs being reviewed, for reports."""
        with self.write() as db:
            db.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", runs)

    def run_names(self) -> dict[str, str]:
        return {run: name for run, _, name in self.read("SELECT run, path, name FROM runs")}

    # -- decisions and picks ---------------------------------------------------------------------------
    def set_decision(self, run: str, file_name: str, reviewer: str, decision: str | None) -> None:
        """``accept``, ``reject``, or None to clear this reviewer's decision."""
        if decision is not None and decision not in DECISIONS:
            raise SgidError(f"unknown decision {decision!r}; choose from: {', '.join(DECISIONS)}")
        with self.write() as db:
            if decision is None:
                db.execute(
                    "DELETE FROM decisions WHERE run = ? AND file_name = ? AND reviewer = ?", (run, file_name, reviewer)
                )
            else:
                db.execute(
                    "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?)",
                    (run, file_name, reviewer, decision, time.time()),
                )
            self._event(db, reviewer, "decision", run=run, file_name=file_name, decision=decision)

    def set_best(self, run: str, source: str, reviewer: str, file_name: str | None) -> None:
        """This reviewer's best augmentation of ``source`` in ``run`` (None clears the pick)."""
        with self.write() as db:
            if file_name is None:
                db.execute("DELETE FROM best WHERE run = ? AND source = ? AND reviewer = ?", (run, source, reviewer))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO best VALUES (?, ?, ?, ?, ?)",
                    (run, source, reviewer, file_name, time.time()),
                )
            self._event(db, reviewer, "best", run=run, source=source, file_name=file_name)

    def decisions(self, runs: Sequence[str] | None = None) -> list[Decision]:
        rows = self.read("SELECT run, file_name, reviewer, decision, time FROM decisions ORDER BY time, reviewer")
        return [Decision(*row) for row in rows if runs is None or row[0] in runs]

    def picks(self, runs: Sequence[str] | None = None) -> list[Pick]:
        rows = self.read("SELECT run, source, reviewer, file_name, time FROM best ORDER BY time, reviewer")
        return [Pick(*row) for row in rows if runs is None or row[0] in runs]

    # -- studies ---------------------------------------------------------------------------------------
    def create_study(
        self, study: str, settings: dict[str, Any], items: Sequence[tuple[str, str, Sequence[tuple[str, str, str]]]]
    ) -> bool:
        """Store a study once: ``items`` are (label, source, [(method, run, file_name) per position]).
        Returns False when it already exists (then nothing changes: ratings keep their items)."""
        with self.write() as db:
            if db.execute("SELECT 1 FROM studies WHERE id = ?", (study,)).fetchone():
                return False
            db.execute(
                "INSERT INTO studies VALUES (?, ?, ?)", (study, json.dumps(settings, sort_keys=True), time.time())
            )
            for number, (label, source, images) in enumerate(items, start=1):
                db.execute("INSERT INTO study_items VALUES (?, ?, ?, ?)", (study, number, label, source))
                db.executemany(
                    "INSERT INTO study_images VALUES (?, ?, ?, ?, ?, ?)",
                    [(study, number, position, *image) for position, image in enumerate(images)],
                )
            self._event(db, "sgid", "study", study=study, items=len(items))
            return True

    def study_settings(self, study: str) -> dict[str, Any] | None:
        found = self.read("SELECT settings FROM studies WHERE id = ?", (study,))
        return json.loads(found[0][0]) if found else None

    def studies(self) -> dict[str, dict[str, Any]]:
        return {sid: json.loads(settings) for sid, settings in self.read("SELECT id, settings FROM studies")}

    def study_items(self, study: str) -> list[tuple[int, str, str]]:
        return [
            tuple(r)
            for r in self.read("SELECT item, label, source FROM study_items WHERE study = ? ORDER BY item", (study,))
        ]

    def study_images(self, study: str, item: int) -> list[tuple[int, str, str, str]]:
        """(position, method, run, file_name) of one item, by position."""
        rows = self.read(
            "SELECT position, method, run, file_name FROM study_images WHERE study = ? AND item = ? ORDER BY position",
            (study, item),
        )
        return [tuple(r) for r in rows]

    def rate(self, study: str, annotator: str, item: int, position: int, scale: str, value: int) -> None:
        if scale not in SCALES:
            raise SgidError(f"unknown scale {scale!r}; choose from: {', '.join(SCALES)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise SgidError("a rating is a whole number from 1 to 5")
        with self.write() as db:
            found = db.execute(
                "SELECT method FROM study_images WHERE study = ? AND item = ? AND position = ?", (study, item, position)
            ).fetchone()
            if found is None:
                raise SgidError(f"study {study} has no image {position} in item {item}")
            db.execute(
                "INSERT OR REPLACE INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (study, annotator, item, position, scale, value, found[0], time.time()),
            )
            self._event(db, annotator, "rating", study=study, item=item, position=position, scale=scale, value=value)

    def ratings(self, study: str, annotator: str | None = None) -> list[Rating]:
        sql = "SELECT study, annotator, item, position, scale, value, method, time FROM ratings WHERE study = ?"
        args: list[Any] = [study]
        if annotator is not None:
            sql += " AND annotator = ?"
            args.append(annotator)
        return [Rating(*row) for row in self.read(sql + " ORDER BY item, position, scale, annotator", args)]

    def event_count(self) -> int:
        return int(self.read("SELECT COUNT(*) FROM events")[0][0])
