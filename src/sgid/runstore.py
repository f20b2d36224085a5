"""The output directory of a run: self-describing, restartable, never half-written.

Layout of OUT::

    run.json            full config, identity hash, package versions, models
    metadata.jsonl      Hugging Face imagefolder manifest, one row per image, sorted by (source, k)
    errors.jsonl        one row per input (or output) that could not be used, with the reason
    <class>/<name>.png  the images
    .sgid-journal.jsonl append-only record of finished items (internal)

Each finished image is written to a hidden temporary file and renamed into place, then a line is appended to
the journal. A run killed at any moment loses at most the item in flight: on restart a torn last journal line
is ignored, items without a journal line are regenerated (same seed, same bytes), and metadata.jsonl and
errors.jsonl are rebuilt from the journal and atomically replaced.

Test-only hook: with ``SGID_TEST_KILL_AFTER_ROWS=N`` in the environment, a process SIGKILLs itself right after
it has journaled its N-th entry (rows and output errors, counted across the run stores it opens), so kill-and-
resume tests stop a run at an exact point without timing. It is read when a store opens; never set it otherwise.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sgid import interrupt
from sgid.errors import RunDirError, SgidError
from sgid.manifest import ERRORS, MANIFEST, RUN_FILE, WRITER_LOCK, dumps, loads, relative_path
from sgid.progress import warn

__all__ = [
    "ERRORS",
    "JOURNAL",
    "MANIFEST",
    "RUN_FILE",
    "RunStore",
    "atomic_write",
    "copy_or_link",
    "dumps",
    "write_figure",
]

JOURNAL = ".sgid-journal.jsonl"
LOCK = WRITER_LOCK
KILL_AFTER_ROWS = "SGID_TEST_KILL_AFTER_ROWS"  # test-only, see the module docstring
_journaled_in_process = 0  # entries this process has journaled, for the test-only kill hook


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The bytes go to a hidden temporary file that is renamed into place; if anything stops the write (a full
    disk, a signal), the temporary file is removed and ``path`` is untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with interrupt.writing(tmp):
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_figure(figure: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG with :func:`atomic_write` (never a half-written plot on a full disk)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write(path, buffer.getvalue())


class FolderLock:
    """An exclusive, non-blocking lock on an output folder (``fcntl.flock`` on a lock file inside it), so two
    processes never write one folder at once. Released on ``release()`` or when the process dies."""

    def __init__(self, folder: Path, name: str = LOCK) -> None:
        self.path = Path(folder) / name
        self._handle: IO[str] | None = None

    def acquire(self, busy_message: str) -> FolderLock:
        """Take the lock or refuse with ``busy_message`` (a reader's momentary check is waited out: 0.5 s)."""
        handle = open(self.path, "a")
        for attempt in range(10):
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt == 9:
                    handle.close()
                    raise RunDirError(busy_message) from None
                time.sleep(0.05)
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def check_identity(
    marker: Path,
    identity: dict[str, Any],
    previous: dict[str, Any],
    *,
    overwrite: bool,
    holds: str,
    key: str = "identity",
    unnamed: str = "identity",
) -> bool:
    """The identity check every folder sgid owns makes (a run, an evaluation, a concepts folder) when it holds
    an earlier job (``previous``, read from ``marker``): True when that job has other settings and ``overwrite``
    allows replacing it; False when they are the same (resume); else a one-line refusal naming the settings that
    differ. ``key``: where the identity is recorded (``key`` and ``key + "_sha256"``); ``holds``: what the folder
    holds, in the message; ``unnamed``: what to name when no single setting differs."""
    if previous.get(f"{key}_sha256") == identity_hash(identity):
        return False
    if overwrite:
        return True
    recorded = previous.get(key)
    changed = _changed_keys(recorded if isinstance(recorded, dict) else {}, identity)
    raise RunDirError(
        f"{marker.parent} holds {holds} with different settings ({', '.join(changed) or unnamed}); rerun with the "
        f"same settings to resume, choose another --out, or pass --overwrite"
    )


def item_key(source: str, k: int | None, method: str) -> str:
    return f"{source}\x1f{k}\x1f{method}"


class RunStore:
    """Owns OUT while a run writes to it (an exclusive lock keeps a second run out)."""

    def __init__(
        self, out_dir: Path, run_info: dict[str, Any], identity: dict[str, Any], *, overwrite: bool = False
    ) -> None:
        self.out = Path(out_dir)
        self.run_info = run_info
        self.identity = identity
        self.overwrite = overwrite
        self.rows: dict[str, dict[str, Any]] = {}  # item key -> manifest row, as JSON
        self.output_errors: dict[str, dict[str, Any]] = {}  # item key -> why it ended without an image
        self.input_errors: list[Mapping[str, Any]] = []  # inputs that could not be used, found afresh each run
        self._journal: int | None = None  # file descriptor of the journal, opened for appending
        self._journal_size = 0
        self._lock = FolderLock(self.out)
        self._kill_after: int | None = None  # test-only (SGID_TEST_KILL_AFTER_ROWS)

    # -- opening -----------------------------------------------------------------------------------------
    def open(self) -> RunStore:
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(f"another sgid run is writing to {self.out}; wait for it or choose another --out")
        run_file = self.out / RUN_FILE
        self.check()
        if run_file.exists() and self.overwrite:
            self._clear_previous_run()
        if not run_file.exists():
            info = dict(self.run_info, identity=self.identity, identity_sha256=identity_hash(self.identity))
            atomic_write(run_file, (json.dumps(info, indent=2, sort_keys=False) + "\n").encode("utf-8"))
        self._clean_temporaries()
        self._load_journal()
        self._journal = os.open(self.out / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._journal_size = os.fstat(self._journal).st_size
        self._kill_after = int(os.environ[KILL_AFTER_ROWS]) if os.environ.get(KILL_AFTER_ROWS) else None
        return self

    def peek(self) -> RunStore:
        """Read what an earlier run finished without taking the lock or changing anything (``--dry-run``)."""
        self.check()
        if (self.out / RUN_FILE).exists() and not self.overwrite:
            self._load_journal(repair=False)
        return self

    def check(self) -> None:
        """Refuse (read-only) an OUT that holds another run or foreign files, unless ``overwrite``."""
        run_file = self.out / RUN_FILE
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise RunDirError(f"--out {self.out} exists and is not a folder")
        if run_file.exists():
            previous = self._read_run_file(run_file)
            check_identity(run_file, self.identity, previous, overwrite=self.overwrite, holds="a run")
        elif any(p.name != LOCK for p in self.out.iterdir()):
            raise RunDirError(
                f"{self.out} is not empty and holds no sgid run (no {RUN_FILE}); choose an empty or new folder"
            )

    def _read_run_file(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
            raise RunDirError(f"{path} is unreadable ({exc}); move it away or pass another --out") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path} is not an sgid run file")
        return data

    def _clear_previous_run(self) -> None:
        """Remove only what a previous sgid run wrote (its images, manifests, journal), never other files."""
        self._load_journal()
        for row in self.rows.values():
            if row.get("file_name"):
                (self.out / row["file_name"]).unlink(missing_ok=True)
        for name in (MANIFEST, ERRORS, JOURNAL, RUN_FILE):
            (self.out / name).unlink(missing_ok=True)
        for folder in sorted(self.out.iterdir()):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self.rows.clear()
        self.output_errors.clear()

    def _clean_temporaries(self) -> None:
        for path in self.out.rglob(".*.tmp-*"):
            path.unlink(missing_ok=True)

    def _load_journal(self, repair: bool = True) -> None:
        """Read the journal: a torn last line (a killed run) is ignored and, with ``repair``, cut off; any
        other line that is not a well-formed entry is skipped with a warning (its item is made again). A key
        journaled twice keeps its last entry; the order of lines does not matter."""
        path = self.out / JOURNAL
        if not path.exists():
            return
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        damaged = 0
        for line in lines:
            entry = _journal_entry(line)
            if entry is None:
                damaged += bool(line.strip())
                continue
            kind, key, row = entry
            (self.rows if kind == "row" else self.output_errors)[key] = row
            (self.output_errors if kind == "row" else self.rows).pop(key, None)
        if damaged:
            warn(f"{path}: {damaged} damaged line(s) ignored; their items are made again")
        if torn and repair:
            with open(path, "r+b") as handle:
                handle.truncate(len(raw) - len(torn))
        # An image deleted by hand since is not done: forget its row so it is regenerated.
        for key in [k for k, row in self.rows.items() if not (self.out / row["file_name"]).is_file()]:
            del self.rows[key]

    # -- progress ----------------------------------------------------------------------------------------
    def is_done(self, key: str) -> bool:
        return key in self.rows or key in self.output_errors

    def commit_image(self, key: str, row: Mapping[str, Any], png: bytes) -> None:
        """Write the image atomically, then journal its row (a ``ManifestRow`` or its JSON object)."""
        row = dict(row)
        path = self.out / row["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with interrupt.committing():
            atomic_write(path, png)
            try:
                self._append({"kind": "row", "key": key, "row": row})
            except BaseException:
                path.unlink(missing_ok=True)  # not journaled: not done, so not left in view
                raise
        self.rows[key] = row

    def commit_row(self, key: str, row: Mapping[str, Any]) -> None:
        """Journal a row whose file is already in place (e.g. a linked original)."""
        row = dict(row)
        self._append({"kind": "row", "key": key, "row": row})
        self.rows[key] = row

    def commit_output_error(self, key: str, row: Mapping[str, Any]) -> None:
        """Record an item that finished without a usable image (e.g. blacked out by the safety checker)."""
        row = dict(row)
        self._append({"kind": "output_error", "key": key, "row": row})
        self.output_errors[key] = row

    def _append(self, entry: dict[str, Any]) -> None:
        """Append one journal line, whole or not at all: a write cut short (a full disk) is truncated away."""
        assert self._journal is not None, "RunStore.open() first"
        data = (dumps(entry) + "\n").encode("utf-8")
        try:
            written = 0
            while written < len(data):
                written += os.write(self._journal, data[written:])
            os.fsync(self._journal)
        except BaseException:
            os.ftruncate(self._journal, self._journal_size)
            raise
        self._journal_size += len(data)
        if self._kill_after is not None:
            _count_for_kill_hook(self._kill_after)

    # -- manifests ---------------------------------------------------------------------------------------
    def write_manifests(self) -> None:
        """Rebuild metadata.jsonl and errors.jsonl from the journal, sorted, and replace them atomically."""
        rows = sorted(self.rows.values(), key=_row_order)
        manifest = "".join(dumps(r) + "\n" for r in rows)
        atomic_write(self.out / MANIFEST, manifest.encode("utf-8"))
        errors = sorted([*map(dict, self.input_errors), *self.output_errors.values()], key=_row_order)
        atomic_write(self.out / ERRORS, "".join(dumps(e) + "\n" for e in errors).encode("utf-8"))

    def close(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        self._lock.release()

    @contextmanager
    def session(self) -> Iterator[RunStore]:
        self.open()
        try:
            yield self
        finally:
            self.close()


def _count_for_kill_hook(limit: int) -> None:
    """The test-only kill hook: SIGKILL this process once it has journaled ``limit`` entries."""
    global _journaled_in_process
    _journaled_in_process += 1
    if _journaled_in_process >= limit:
        os.kill(os.getpid(), signal.SIGKILL)


def _journal_entry(line: bytes) -> tuple[str, str, dict[str, Any]] | None:
    """(kind, key, row) of a well-formed journal line, else None."""
    try:
        entry = loads(line)
    except ValueError:  # not JSON, not UTF-8, nested too deeply
        return None
    if not isinstance(entry, dict):
        return None
    kind, key, row = entry.get("kind"), entry.get("key"), entry.get("row")
    if kind not in ("row", "output_error") or not isinstance(key, str) or not isinstance(row, dict):
        return None
    if kind == "row":
        try:
            relative_path(row.get("file_name"), "file_name", "journal")
        except SgidError:
            return None  # never look at (or later remove) a path outside OUT
    return kind, key, row


def _row_order(row: dict[str, Any]) -> tuple[str, int, str]:
    k, source, method = row.get("k"), row.get("source"), row.get("method")
    return (
        source if isinstance(source, str) else "",
        k if isinstance(k, int) and not isinstance(k, bool) else -1,
        method if isinstance(method, str) else "",
    )


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def copy_or_link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` where possible (same file system), else copy; atomic either way."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    with interrupt.writing(tmp):
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
