"""Reading the output folder of ``sgid augment`` (RUN_DIR) for the commands that build on it.

A run directory holds ``metadata.jsonl`` (one row per image: ``file_name`` relative to RUN_DIR, ``label`` =
class folder, ``label_text``, ``source`` = the real source image relative to the input folder, ``k``,
``method``, ``prompt``, ...) and ``run.json`` (``config.input_dir``: where the real images are; ``models``).
Rows with ``method == "original"`` are copies of real images (``--include-originals``); everything else is
generated.

Everything here is checked before any model is loaded, and every problem is a one-line
:class:`~sgid.errors.SgidError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sgid.dataset import default_label
from sgid.errors import SgidError
from sgid.images import sha256_bytes
from sgid.runstore import ERRORS, MANIFEST, RUN_FILE

ORIGINAL = "original"  # the method name of rows that are copies of real images


@dataclass(frozen=True)
class Entry:
    """One row of ``metadata.jsonl`` with its paths resolved."""

    file_name: str  # "<class>/<name>.png", relative to RUN_DIR
    path: Path  # RUN_DIR / file_name
    label: str  # class folder name
    label_text: str  # the label as text (used in prompts)
    method: str
    source: str | None  # source image relative to the input folder; None for methods without a source
    source_path: Path | None  # where that source is now (input folder or --source-dir)
    source_sha256: str | None
    k: int | None
    prompt: str | None
    row: Mapping[str, Any] = field(repr=False)  # the manifest row as written by sgid augment

    @property
    def is_original(self) -> bool:
        return self.method == ORIGINAL


@dataclass(frozen=True)
class RunDir:
    path: Path
    entries: tuple[Entry, ...]  # every manifest row, in file order
    info: Mapping[str, Any]  # run.json ({} when the run has none)
    source_dir: Path | None  # the real input folder (run.json's config.input_dir or --source-dir)
    unusable_sources: frozenset[str] = frozenset()  # input images the run could not read (its errors.jsonl)

    @property
    def identity(self) -> str:
        """What names this run wherever its folder moves: run.json's ``identity_sha256``, else the folder path."""
        identity = self.info.get("identity_sha256")
        return identity if isinstance(identity, str) and identity else str(self.path.resolve())

    @property
    def generated(self) -> list[Entry]:
        """The rows to judge: every image that is not a copy of a real one."""
        return [e for e in self.entries if not e.is_original]

    @property
    def classes(self) -> dict[str, str]:
        """Every class of the dataset (class folder -> label text), sorted by folder name."""
        found: dict[str, str] = {}
        for entry in self.entries:
            found.setdefault(entry.label, entry.label_text)
        return dict(sorted(found.items()))

    @property
    def models(self) -> Mapping[str, str]:
        """Model names the run used (role -> name), e.g. ``{"scorer": "openai/clip-vit-base-patch32"}``."""
        models = self.info.get("models")
        return models if isinstance(models, dict) else {}

    @property
    def models_preset(self) -> str | None:
        config = self.info.get("config")
        preset = config.get("models") if isinstance(config, dict) else None
        return preset if isinstance(preset, str) else None

    def require_source_dir(self, why: str) -> Path:
        """The real input folder, or a one-line error saying how to point at it."""
        if self.source_dir is None:
            raise SgidError(
                f"the real images are needed ({why}), but {self.path / RUN_FILE} names no input folder; "
                f"pass --source-dir"
            )
        if not self.source_dir.is_dir():
            raise SgidError(
                f"the real images are needed ({why}), but the run's input folder {self.source_dir} is gone; "
                f"pass --source-dir where they are now"
            )
        return self.source_dir


def read_run_dir(path: str | Path, *, source_dir: str | Path | None = None) -> RunDir:
    """Read and check RUN_DIR: its manifest parses, every listed image exists inside it."""
    root = Path(path)
    if not root.exists():
        raise SgidError(f"run folder not found: {root}")
    if not root.is_dir():
        raise SgidError(f"not a folder: {root}")
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise SgidError(f"{root} is not an sgid augment run: it has no {MANIFEST}")
    info = _read_run_info(root / RUN_FILE)
    resolved_source: Path | None
    if source_dir is not None:
        resolved_source = Path(source_dir).expanduser()
        if not resolved_source.is_dir():
            raise SgidError(f"--source-dir {source_dir} is not a folder")
    else:
        configured = (info.get("config") or {}).get("input_dir")
        resolved_source = Path(configured) if isinstance(configured, str) and configured else None
    entries = tuple(_entries(manifest, root, resolved_source))
    if not entries:
        raise SgidError(f"{manifest} lists no images")
    missing = [e.file_name for e in entries if not e.path.is_file()]
    if missing:
        raise SgidError(f"{len(missing)} image(s) listed in {manifest} do not exist, e.g. {missing[0]}")
    return RunDir(root, entries, info, resolved_source, _unusable_sources(root / ERRORS))


def check_sources(entries: Iterable[Entry]) -> None:
    """Every source image exists and is byte-identical to the one the run augmented (its sha256)."""
    seen: dict[Path, str | None] = {}
    for entry in entries:
        if entry.source_path is not None:
            seen.setdefault(entry.source_path, entry.source_sha256)
    for source_path, expected in seen.items():
        try:
            data = source_path.read_bytes()
        except OSError:
            raise SgidError(
                f"source image {source_path} not found; pass --source-dir where the real images are"
            ) from None
        if expected and sha256_bytes(data) != expected:
            raise SgidError(
                f"source image {source_path} differs from the one the run augmented (sha256); "
                f"pass --source-dir with the original data"
            )


def _unusable_sources(path: Path) -> frozenset[str]:
    """Input images the run reported as unreadable (rows of errors.jsonl about a source, not an output)."""
    if not path.is_file():
        return frozenset()
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("k") is None and isinstance(row.get("source"), str):
            found.add(row["source"])
    return frozenset(found)


def _read_run_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SgidError(f"{path} is unreadable ({exc})") from None
    if not isinstance(info, dict):
        raise SgidError(f"{path} is not an sgid run file")
    return info


def _entries(manifest: Path, root: Path, source_dir: Path | None) -> Iterable[Entry]:
    seen: set[str] = set()
    with open(manifest, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{manifest}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SgidError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise SgidError(f"{where}: expected a JSON object")
            entry = _entry(row, root, source_dir, where)
            if entry.file_name in seen:
                raise SgidError(f"{where}: {entry.file_name} is listed twice")
            seen.add(entry.file_name)
            yield entry


def _entry(row: dict[str, Any], root: Path, source_dir: Path | None, where: str) -> Entry:
    file_name = _relative(row.get("file_name"), "file_name", where)
    label = row.get("label")
    if not isinstance(label, str) or not label:
        raise SgidError(f"{where}: missing 'label'")
    source = row.get("source")
    if source is not None:
        source = _relative(source, "source", where)
    k = row.get("k")
    prompt = row.get("prompt")
    return Entry(
        file_name=file_name,
        path=root / file_name,
        label=label,
        label_text=str(row.get("label_text") or default_label(label)),
        method=str(row.get("method") or "unknown"),
        source=source,
        source_path=source_dir / source if source is not None and source_dir is not None else None,
        source_sha256=row.get("source_sha256") or None,
        k=int(k) if isinstance(k, int) else None,
        prompt=prompt if isinstance(prompt, str) and prompt.strip() else None,
        row=row,
    )


def _relative(value: Any, name: str, where: str) -> str:
    """A forward-slash path that stays inside its folder (no absolute paths, no ``..``)."""
    if not isinstance(value, str) or not value:
        raise SgidError(f"{where}: missing '{name}'")
    posix = PurePosixPath(value)
    if posix.is_absolute() or ".." in posix.parts or "\\" in value:
        raise SgidError(f"{where}: {name} {value!r} must be a relative path inside the folder")
    return posix.as_posix()
