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
import json
import os
import shutil
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sgid.errors import RunDirError
from sgid.manifest import ERRORS, MANIFEST, RUN_FILE, dumps

__all__ = ["ERRORS", "JOURNAL", "MANIFEST", "RUN_FILE", "RunStore", "atomic_write", "copy_or_link", "dumps"]

JOURNAL = ".sgid-journal.jsonl"
LOCK = ".sgid-lock"
KILL_AFTER_ROWS = "SGID_TEST_KILL_AFTER_ROWS"  # test-only, see the module docstring
_journaled_in_process = 0  # entries this process has journaled, for the test-only kill hook


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class FolderLock:
    """An exclusive, non-blocking lock on an output folder (``fcntl.flock`` on a lock file inside it), so two
    processes never write one folder at once. Released on ``release()`` or when the process dies."""

    def __init__(self, folder: Path, name: str = LOCK) -> None:
        self.path = Path(folder) / name
        self._handle: IO[str] | None = None

    def acquire(self, busy_message: str) -> FolderLock:
        handle = open(self.path, "a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RunDirError(busy_message) from None
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


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
        self._journal: IO[str] | None = None
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
        self._journal = open(self.out / JOURNAL, "a", encoding="utf-8")
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
            if previous.get("identity_sha256") != identity_hash(self.identity) and not self.overwrite:
                changed = _changed_keys(previous.get("identity", {}), self.identity)
                raise RunDirError(
                    f"{self.out} holds a run with different settings ({', '.join(changed) or 'identity'}); "
                    f"rerun with the same settings to resume, choose another --out, or pass --overwrite"
                )
        elif any(p.name != LOCK for p in self.out.iterdir()):
            raise RunDirError(
                f"{self.out} is not empty and holds no sgid run (no {RUN_FILE}); choose an empty or new folder"
            )

    def _read_run_file(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
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
        path = self.out / JOURNAL
        if not path.exists():
            return
        raw = path.read_bytes()
        good_length = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn last line from a killed run
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break
            good_length += len(line)
            if entry["kind"] == "row":
                self.rows[entry["key"]] = entry["row"]
            elif entry["kind"] == "output_error":
                self.output_errors[entry["key"]] = entry["row"]
        if good_length != len(raw) and repair:
            with open(path, "r+b") as handle:
                handle.truncate(good_length)
        # An image deleted by hand since is not done: forget its row so it is regenerated.
        for key in [k for k, row in self.rows.items() if not (self.out / row["file_name"]).exists()]:
            del self.rows[key]

    # -- progress ----------------------------------------------------------------------------------------
    def is_done(self, key: str) -> bool:
        return key in self.rows or key in self.output_errors

    def commit_image(self, key: str, row: Mapping[str, Any], png: bytes) -> None:
        """Write the image atomically, then journal its row (a ``ManifestRow`` or its JSON object)."""
        row = dict(row)
        path = self.out / row["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, png)
        self._append({"kind": "row", "key": key, "row": row})
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
        assert self._journal is not None, "RunStore.open() first"
        self._journal.write(dumps(entry) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
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
            self._journal.close()
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


def _row_order(row: dict[str, Any]) -> tuple[str, int, str]:
    k = row.get("k")
    return (row.get("source") or "", -1 if k is None else int(k), row.get("method") or "")


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def copy_or_link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` where possible (same file system), else copy; atomic either way."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
