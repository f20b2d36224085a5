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

import hashlib
import io
import json
import os
import shutil
import signal
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sgid import interrupt
from sgid.errors import RunDirError, SgidError
from sgid.manifest import ERRORS, MANIFEST, RUN_FILE, WRITER_LOCK, dumps, loads, relative_path
from sgid.owned import FolderLock, OwnedFolder, atomic_write, check_identity, identity_hash
from sgid.progress import warn

__all__ = [
    "ERRORS",
    "JOURNAL",
    "MANIFEST",
    "RUN_FILE",
    "FolderLock",
    "RunStore",
    "atomic_write",
    "check_identity",
    "copy_or_link",
    "dumps",
    "identity_hash",
    "figure_png",
    "write_figure",
]

JOURNAL = ".sgid-journal.jsonl"
LOCK = WRITER_LOCK
KILL_AFTER_ROWS = "SGID_TEST_KILL_AFTER_ROWS"  # test-only, see the module docstring
_journaled_in_process = 0  # entries this process has journaled, for the test-only kill hook


def write_figure(figure: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG with :func:`atomic_write` (never a half-written plot on a full disk)."""
    atomic_write(path, figure_png(figure, dpi))


def figure_png(figure: Any, dpi: int, **savefig: Any) -> bytes:
    """A matplotlib figure as PNG bytes, every text drawn as it is: maths notation is off, so a class named
    ``$5_to_$10`` is a label, not a formula that fails to parse (the texts made so far are switched off here,
    the tick labels made while drawing by the setting)."""
    import matplotlib
    from matplotlib.text import Text

    for text in figure.findobj(Text):
        text.set_parse_math(False)
    buffer = io.BytesIO()
    with matplotlib.rc_context({"text.parse_math": False}):
        figure.savefig(buffer, format="png", dpi=dpi, **savefig)
    return buffer.getvalue()


def item_key(source: str, k: int | None, method: str) -> str:
    return f"{source}\x1f{k}\x1f{method}"


class RunStore(OwnedFolder):
    """Owns OUT while a run writes to it (an exclusive lock keeps a second run out)."""

    marker = RUN_FILE
    lock_name = LOCK
    holds = "a run"
    foreign = "{path} is not empty and holds no sgid run (no " + RUN_FILE + "); choose an empty or new folder"

    def __init__(
        self, out_dir: Path, run_info: dict[str, Any], identity: dict[str, Any], *, overwrite: bool = False
    ) -> None:
        super().__init__(out_dir, identity, overwrite=overwrite)
        self.run_info = run_info
        self.rows: dict[str, dict[str, Any]] = {}  # item key -> manifest row, as JSON
        self.output_errors: dict[str, dict[str, Any]] = {}  # item key -> why it ended without an image
        self.input_errors: list[Mapping[str, Any]] = []  # inputs that could not be used, found afresh each run
        self._sizes: dict[str, int] = {}  # item key -> its file's size in bytes when journaled (newer journals)
        self._journal: int | None = None  # file descriptor of the journal, opened for appending
        self._journal_size = 0
        self._kill_after: int | None = None  # test-only (SGID_TEST_KILL_AFTER_ROWS)

    @property
    def out(self) -> Path:
        return self.path

    # -- opening -----------------------------------------------------------------------------------------
    def open(self) -> RunStore:
        kill_after = _kill_hook_limit()  # checked before anything is written
        if self.claim() is not None and self.overwrite:
            self.clear()
        run_file = self.out / RUN_FILE
        if not run_file.exists():
            info = {**self.run_info, **self.stamp()}
            atomic_write(run_file, (json.dumps(info, indent=2, sort_keys=False) + "\n").encode("utf-8"))
        self.remove_temporaries()
        self._load_journal()
        self._journal = os.open(self.out / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._journal_size = os.fstat(self._journal).st_size
        self._kill_after = kill_after
        return self

    def peek(self) -> RunStore:
        """Read what an earlier run finished without taking the lock or changing anything (``--dry-run``)."""
        self.check()
        if (self.out / RUN_FILE).exists() and not self.overwrite:
            self._load_journal(repair=False)
        return self

    def read_marker(self) -> dict[str, Any]:
        path = self.out / RUN_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
            raise RunDirError(f"{path} is unreadable ({exc}); move it away or pass another --out") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path} is not an sgid run file")
        return data

    def clear(self) -> None:
        """Remove only what a previous sgid run wrote (its images, manifests, journal), never other files."""
        self._load_journal(keep_changed=True)  # an image changed since is still this run's: removed too
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
        self._sizes.clear()

    def _load_journal(self, repair: bool = True, keep_changed: bool = False) -> None:
        """Read the journal: a torn last line (a killed run) is ignored and, with ``repair``, cut off; any
        other line that is not a well-formed entry is skipped with a warning (its item is made again). A key
        journaled twice keeps its last entry; the order of lines does not matter. An image deleted or changed
        since (another size) is not done, unless ``keep_changed`` (every row journaled, as :meth:`clear` needs)."""
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
            kind, key, row, size = entry
            (self.rows if kind == "row" else self.output_errors)[key] = row
            (self.output_errors if kind == "row" else self.rows).pop(key, None)
            self._sizes.pop(key, None)
            if size is not None:
                self._sizes[key] = size
        if damaged:
            warn(f"{path}: {damaged} damaged line(s) ignored; their items are made again")
        if torn and repair:
            with open(path, "r+b") as handle:
                handle.truncate(len(raw) - len(torn))
        if keep_changed:
            return
        # An image deleted by hand since is not done: forget its row so it is made again. So is one whose size
        # differs from the size journaled with it (cut short by a copy or a damaged disk, edited by hand).
        changed = 0
        for key, row in list(self.rows.items()):
            size = _file_size(self.out / row["file_name"])
            if size is None or size != self._sizes.get(key, size):
                del self.rows[key]
                changed += size is not None
        if changed and repair:
            warn(f"{self.out}: {changed} image(s) changed since this run wrote them (another size): made again")

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
                self._append({"kind": "row", "key": key, "row": row, "bytes": len(png)})
            except BaseException:
                path.unlink(missing_ok=True)  # not journaled: not done, so not left in view
                raise
        self.rows[key] = row

    def commit_row(self, key: str, row: Mapping[str, Any]) -> None:
        """Journal a row whose file is already in place (e.g. a linked original)."""
        row = dict(row)
        self._append({"kind": "row", "key": key, "row": row, "bytes": (self.out / row["file_name"]).stat().st_size})
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
    def manifest_lines(self) -> Iterator[bytes]:
        """metadata.jsonl as the journal makes it, line by line."""
        for row in sorted(self.rows.values(), key=_row_order):
            yield (dumps(row) + "\n").encode("utf-8")

    def manifest_is_current(self) -> bool:
        """Whether metadata.jsonl holds exactly what the journal makes (hashed as it streams: no copy in memory);
        a line edited or damaged by hand is not."""
        path = self.out / MANIFEST
        if not path.is_file():
            return False
        expected = hashlib.sha256()
        for line in self.manifest_lines():
            expected.update(line)
        found = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                found.update(chunk)
        return found.digest() == expected.digest()

    def write_manifests(self) -> None:
        """Rebuild metadata.jsonl and errors.jsonl from the journal, sorted, and replace them atomically."""
        atomic_write(self.out / MANIFEST, b"".join(self.manifest_lines()))
        errors = sorted([*map(dict, self.input_errors), *self.output_errors.values()], key=_row_order)
        atomic_write(self.out / ERRORS, "".join(dumps(e) + "\n" for e in errors).encode("utf-8"))

    def close(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        super().close()

    @contextmanager
    def session(self) -> Iterator[RunStore]:
        self.open()
        try:
            yield self
        finally:
            self.close()


def _kill_hook_limit() -> int | None:
    value = os.environ.get(KILL_AFTER_ROWS, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise SgidError(f"{KILL_AFTER_ROWS}={value!r} (a test-only hook) must be a whole number of journal rows")
    return int(value)


def _count_for_kill_hook(limit: int) -> None:
    """The test-only kill hook: SIGKILL this process once it has journaled ``limit`` entries."""
    global _journaled_in_process
    _journaled_in_process += 1
    if _journaled_in_process >= limit:
        os.kill(os.getpid(), signal.SIGKILL)


def _file_size(path: Path) -> int | None:
    """The size of a regular file, None if there is none at ``path``."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _journal_entry(line: bytes) -> tuple[str, str, dict[str, Any], int | None] | None:
    """(kind, key, row, the image's size in bytes if journaled) of a well-formed journal line, else None."""
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
    size = entry.get("bytes")
    return kind, key, row, size if isinstance(size, int) and not isinstance(size, bool) else None


def _row_order(row: dict[str, Any]) -> tuple[str, int, str]:
    k, source, method = row.get("k"), row.get("source"), row.get("method")
    return (
        source if isinstance(source, str) else "",
        k if isinstance(k, int) and not isinstance(k, bool) else -1,
        method if isinstance(method, str) else "",
    )


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
