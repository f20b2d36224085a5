"""The manifest schema of a run folder: one typed row per image, one per failure, and one reader for both.

``metadata.jsonl`` holds one :class:`ManifestRow` per image (the Hugging Face imagefolder convention:
``file_name`` relative to the folder, plus columns); ``errors.jsonl`` one :class:`ErrorRow` per input or
output that could not be used. The core fields every reader relies on are typed attributes; every other key
(generation settings, method fields, and fields written by newer versions or other tools) is kept in
``details`` unchanged and in order, so a row read and written again is the same JSON::

    >>> row = ManifestRow.from_json({"file_name": "cat/a.png", "label": "cat", "k": 0, "method": "sgid",
    ...                              "prompt": "A picture of a cat", "new_field": [1, 2]})
    >>> row.file_name, row.k, row.label_text, row["prompt"]
    ('cat/a.png', 0, 'cat', 'A picture of a cat')
    >>> list(row.to_json())
    ['file_name', 'label', 'k', 'method', 'prompt', 'new_field']

Rows are also read-only mappings (``row["prompt"]``, ``row.get("seed")``, ``dict(row)``), the JSON object
they stand for. :func:`read_run` reads a whole folder (``run.json``, ``metadata.jsonl``, ``errors.jsonl``)
and is what every command that builds on a run uses; a problem is a one-line :class:`~sgid.errors.SgidError`
naming the file and line.
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sgid.errors import SgidError
from sgid.progress import warn

RUN_FILE = "run.json"
MANIFEST = "metadata.jsonl"
ERRORS = "errors.jsonl"
ORIGINAL = "original"  # the method name of rows that are copies of real images (--include-originals)


def dumps(row: Mapping[str, Any]) -> str:
    """One JSON line as sgid writes it (UTF-8 text, no NaN).

    A path that is not valid UTF-8 (possible on Linux) reaches Python as text with lone surrogates
    (``os.fsdecode``'s surrogateescape); such a line is written with ``\\u`` escapes instead, which is valid
    JSON and valid UTF-8, and reads back (``json.loads``) as the same text, which ``os.fsencode`` turns back
    into the original bytes:

    >>> import os
    >>> name = os.fsdecode(b"cat/\\xff.png")  # what os.listdir gives for a name with the byte 0xff
    >>> dumps({"source": name})
    '{"source": "cat/\\\\udcff.png"}'
    >>> os.fsencode(json.loads(dumps({"source": name}))["source"])
    b'cat/\\xff.png'
    """
    data = dict(row)
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text


def loads(text: str | bytes) -> Any:
    """``json.loads`` for data sgid did not write: any failure (not JSON, not UTF-8, nested too deeply, the
    ``NaN``/``Infinity`` Python's reader accepts but JSON has not and sgid never writes) is a ``ValueError``."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def default_label(class_name: str) -> str:
    """Folder name to label text: ``golden_retriever`` -> ``golden retriever``."""
    return " ".join(class_name.replace("_", " ").split())


class _JsonRow(Mapping[str, Any]):
    """A row is also the read-only mapping of its JSON object."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


@dataclass(frozen=True, eq=False)
class ManifestRow(_JsonRow):
    """One image of a run (a line of ``metadata.jsonl``)."""

    file_name: str  # "<class>/<name>.png", relative to the run folder
    label: str  # class folder name
    label_text: str  # the label as text (used in prompts)
    source: str | None  # the real source image, relative to the first run's input folder; None: no source
    source_sha256: str | None
    k: int | None  # which augmentation of the source (None: a copy of the original)
    method: str  # "sgid", ..., or "original"
    details: dict[str, Any] = field(default_factory=dict)  # every other key, in order
    absent: frozenset[str] = frozenset()  # core keys the JSON did not have (not written back)

    CORE = ("file_name", "label", "label_text", "source", "source_sha256", "k", "method")

    @property
    def is_original(self) -> bool:
        return self.method == ORIGINAL

    @property
    def prompt(self) -> str | None:
        value = self.details.get("prompt")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def chain(self) -> tuple[str, ...]:
        """The methods that made this image, in order (chained runs record theirs)."""
        recorded = self.details.get("chain")
        if isinstance(recorded, list) and recorded and all(isinstance(m, str) for m in recorded):
            return tuple(recorded)
        return () if self.is_original else (self.method,)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {name: getattr(self, name) for name in self.CORE if name not in self.absent}
        row.update(self.details)
        return row

    def __getitem__(self, key: str) -> Any:
        if key in self.CORE and key not in self.absent:
            return getattr(self, key)
        return self.details[key]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ManifestRow) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_json(cls, data: Any, where: str = "row") -> ManifestRow:
        """Check and type a JSON object; ``where`` ("FILE, line N") prefixes any error."""
        if not isinstance(data, dict):
            raise SgidError(f"{where}: expected a JSON object")
        file_name = relative_path(data.get("file_name"), "file_name", where)
        label = data.get("label")
        if not isinstance(label, str) or not label:
            raise SgidError(f"{where}: missing 'label'")
        source = data.get("source")
        return cls(
            file_name=file_name,
            label=label,
            label_text=_typed(data, "label_text", str, where) or default_label(label),
            source=relative_path(source, "source", where) if source is not None else None,
            source_sha256=_typed(data, "source_sha256", str, where),
            k=_typed(data, "k", int, where),
            method=_typed(data, "method", str, where) or "unknown",
            details={key: value for key, value in data.items() if key not in cls.CORE},
            absent=frozenset(name for name in cls.CORE if name not in data),
        )


def json_number(value: Any) -> bool:
    """Whether a value read from JSON is a finite number (``true``/``false`` are not, though Python's bools are ints).

    >>> [json_number(v) for v in (1, 0.5, True, "1", float("nan"), None)]
    [True, True, False, False, False, False]
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _typed(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``data[key]`` if it is a ``kind`` or null/absent (None), else a one-line error."""
    value = data.get(key)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise SgidError(f"{where}: '{key}' must be {'an integer' if kind is int else 'text'} or null, not {value!r}")


@dataclass(frozen=True, eq=False)
class ErrorRow(_JsonRow):
    """An input that could not be used, or an item that ended without an image (a line of ``errors.jsonl``)."""

    source: str | None  # the input's path (or "pool:<file>" for retrieval pool images)
    k: int | None  # None: the input itself; an int: that augmentation of it
    reason: str
    method: str | None = None  # set for items (k is not None); written only when set
    details: dict[str, Any] = field(default_factory=dict)  # every other key, in order

    @property
    def is_input(self) -> bool:
        """True when the row is about an input image (unreadable, not an image), not about one output."""
        return self.k is None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"source": self.source, "k": self.k}
        if self.method is not None:
            row["method"] = self.method
        row["reason"] = self.reason
        row.update(self.details)
        return row

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ErrorRow) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_json(cls, data: Any, where: str = "row") -> ErrorRow:
        if not isinstance(data, dict):
            raise SgidError(f"{where}: expected a JSON object")
        source, k, method, reason = data.get("source"), data.get("k"), data.get("method"), data.get("reason")
        return cls(
            source=source if isinstance(source, str) else None,
            k=k if isinstance(k, int) and not isinstance(k, bool) else None,
            reason=str(reason) if reason is not None else "",
            method=method if isinstance(method, str) else None,
            details={key: value for key, value in data.items() if key not in ("source", "k", "method", "reason")},
        )


def row_order(row: ManifestRow | ErrorRow) -> tuple[str, int, str]:
    """The order of both files: by source, then k (the original first), then method."""
    return (row.source or "", -1 if row.k is None else row.k, row.method or "")


@dataclass(frozen=True)
class RunRecord:
    """What a run folder says about itself."""

    path: Path
    info: dict[str, Any]  # run.json ({} when the folder has none)
    rows: tuple[ManifestRow, ...]  # metadata.jsonl, in file order
    errors: tuple[ErrorRow, ...]  # errors.jsonl, in file order (() when absent)

    @property
    def input_dir(self) -> Path | None:
        """The input folder the run was made from (run.json's config.input_dir), if recorded."""
        return recorded_input_dir(self.info)

    @property
    def unusable_sources(self) -> frozenset[str]:
        """Input images the run could not read (error rows about an input, not one output)."""
        return frozenset(e.source for e in self.errors if e.is_input and e.source is not None)


def read_run(path: str | Path) -> RunRecord:
    """Read a run folder: ``run.json`` (optional), ``metadata.jsonl`` (required) and ``errors.jsonl`` (optional).

    Every manifest line must be a JSON object with a relative ``file_name`` and a ``label``; a file listed
    twice is an error. Images are not opened (callers decide whether a missing one is an error).
    """
    root = Path(path)
    if not root.exists():
        raise SgidError(f"run folder not found: {root}")
    if not root.is_dir():
        raise SgidError(f"not a folder: {root}")
    manifest = root / MANIFEST
    writing = being_written(root)
    if not manifest.is_file():
        if writing:
            raise SgidError(
                f"{root} is being written by a running sgid augment and has no manifest yet (one is written every "
                f"30 s and at the end); wait for it, or stop it (Ctrl-C writes one)"
            )
        raise SgidError(f"{root} is not an sgid augment run: it has no {MANIFEST}")
    rows = tuple(_read_lines(manifest, ManifestRow.from_json))  # the last complete one: it is replaced whole
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        if row.file_name in seen:
            raise SgidError(f"{manifest}: {row.file_name} is listed twice (row {number})")
        seen.add(row.file_name)
    if writing and root.resolve() not in _warned_writing:
        _warned_writing.add(root.resolve())
        warn(
            f"{root} is being written by a running sgid augment: using its last complete manifest ({len(rows)} images)"
        )
    errors = root / ERRORS
    return RunRecord(
        root,
        read_run_info(root / RUN_FILE),
        rows,
        tuple(_read_lines(errors, ErrorRow.from_json, lenient=True)) if errors.is_file() else (),
    )


#: The lock file of a run folder, held (``flock``) by the one process writing it.
WRITER_LOCK = ".sgid-lock"
_warned_writing: set[Path] = set()


def being_written(folder: Path) -> bool:
    """True while a process holds ``folder``'s writer lock (a running ``sgid augment``). Readers never wait for
    it: manifests and images are replaced whole, so the last complete manifest is always a consistent view."""
    try:
        handle = open(Path(folder) / WRITER_LOCK, "rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def read_run_info(path: Path) -> dict[str, Any]:
    """``run.json`` as a dict ({} when absent); unreadable or not an object is an error."""
    if not path.is_file():
        return {}
    try:
        info = loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON, nested too deeply
        raise SgidError(f"{path} is unreadable ({exc})") from None
    if not isinstance(info, dict):
        raise SgidError(f"{path} is not an sgid run file")
    return info


def recorded_input_dir(info: Mapping[str, Any]) -> Path | None:
    """run.json's ``config.input_dir``: the folder a run was made from, if recorded."""
    config = info.get("config")
    value = config.get("input_dir") if isinstance(config, dict) else None
    return Path(value) if isinstance(value, str) and value else None


def _read_lines(path: Path, parse: Any, *, lenient: bool = False) -> Iterator[Any]:
    """Parsed rows of a JSON-lines file (see :func:`json_lines`). ``lenient``: skip lines that do not parse."""
    for number, data in json_lines(path, lenient=lenient):
        try:
            yield parse(data, f"{path}, line {number}")
        except SgidError:
            if not lenient:
                raise


def json_lines(path: Path, *, lenient: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of every non-blank line of a JSON-lines file written by anyone: UTF-8 with or
    without a byte-order mark, ``\\n`` or ``\\r\\n`` line ends (and nothing else: U+2028 or a form feed inside
    a string is text, not a line end). A line that is not JSON is a one-line :class:`SgidError` naming the file
    and line (skipped when ``lenient``); so is a file that cannot be read or is not UTF-8."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SgidError(f"{path} is unreadable ({exc})") from None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, loads(line)
        except ValueError as exc:
            if not lenient:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise SgidError(f"{path}, line {number}: not JSON ({reason})") from None


def relative_path(value: Any, name: str, where: str) -> str:
    """A forward-slash path that stays inside its folder (no absolute paths, no ``..``)."""
    if not isinstance(value, str) or not value:
        raise SgidError(f"{where}: missing '{name}'")
    posix = PurePosixPath(value)
    if posix.is_absolute() or ".." in posix.parts or "\\" in value:
        raise SgidError(f"{where}: {name} {value!r} must be a relative path inside the folder")
    return posix.as_posix()
