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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgid.dataset import locate
from sgid.errors import SgidError
from sgid.images import sha256_bytes
from sgid.manifest import MANIFEST, ORIGINAL, RUN_FILE, ManifestRow, read_run

__all__ = ["ORIGINAL", "Entry", "RunDir", "check_sources", "read_run_dir"]


@dataclass(frozen=True)
class Entry:
    """One row of ``metadata.jsonl`` with its paths resolved."""

    row: ManifestRow = field(repr=False)  # the manifest row as written by sgid augment
    path: Path  # RUN_DIR / file_name
    source_path: Path | None  # where the source is now (input folder or --source-dir)

    @property
    def file_name(self) -> str:  # "<class>/<name>.png", relative to RUN_DIR
        return self.row.file_name

    @property
    def label(self) -> str:  # class folder name
        return self.row.label

    @property
    def label_text(self) -> str:  # the label as text (used in prompts)
        return self.row.label_text

    @property
    def method(self) -> str:
        return self.row.method

    @property
    def source(self) -> str | None:  # source image relative to the input folder; None for methods without one
        return self.row.source

    @property
    def source_sha256(self) -> str | None:
        return self.row.source_sha256 or None

    @property
    def k(self) -> int | None:
        return self.row.k

    @property
    def prompt(self) -> str | None:
        return self.row.prompt

    @property
    def is_original(self) -> bool:
        return self.row.is_original


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
    record = read_run(path)
    root, manifest = record.path, record.path / MANIFEST
    resolved_source: Path | None
    if source_dir is not None:
        resolved_source = Path(source_dir).expanduser()
        if not resolved_source.is_dir():
            raise SgidError(f"--source-dir {source_dir} is not a folder")
    else:
        resolved_source = record.input_dir
    entries = tuple(
        Entry(
            row=row,
            path=root / row.file_name,
            source_path=locate(resolved_source, row.source) if row.source is not None and resolved_source else None,
        )
        for row in record.rows
    )
    if not entries:
        raise SgidError(f"{manifest} lists no images")
    missing = [e.file_name for e in entries if not e.path.is_file()]
    if missing:
        raise SgidError(f"{len(missing)} image(s) listed in {manifest} do not exist, e.g. {missing[0]}")
    return RunDir(root, entries, record.info, resolved_source, record.unusable_sources)


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
