"""The input: a folder with one subfolder per class (torchvision ``ImageFolder`` convention).

Files are listed, not read, here; reading happens image by image so one bad file never stops a run.
Hidden files and folders (name starting with ``.``) and files directly in the root are ignored. A class folder
without any image file is left out of the classes (every command alike) and listed in ``Listing.empty`` and,
with the reason, in ``Listing.skipped``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from sgid.errors import SgidError
from sgid.images import IMAGE_EXTENSIONS
from sgid.manifest import MANIFEST, RUN_FILE, default_label

__all__ = [
    "EMPTY_CLASS",
    "Listing",
    "Source",
    "default_label",
    "empty_classes_note",
    "is_run_dir",
    "read_label_names",
    "scan",
    "scan_run",
]


@dataclass(frozen=True)
class Source:
    """One input file: where it is and which class it belongs to.

    When the input is an earlier sgid run (methods chained, e.g. ``text2img+sgid``), a source is one of that
    run's images and ``origin`` keeps the path of the real image it descends from.
    """

    path: Path  # absolute path on disk
    relpath: str  # path relative to the input root, with forward slashes: "<class>/<name>"
    class_name: str  # the class folder's name
    label: str  # the label text used in prompts
    origin: str | None = None  # chained input: the real source's path in the first run's input folder
    origin_sha256: str | None = None
    chain: tuple[str, ...] = ()  # chained input: the methods that made this image, in order


@dataclass(frozen=True)
class Listing:
    sources: tuple[Source, ...]  # image files, sorted by relpath
    skipped: tuple[tuple[str, str], ...]  # (relpath, reason) for files that are not images
    classes: tuple[str, ...]  # class folder names with at least one image file, sorted
    labels: dict[str, str]  # class folder name -> label text
    empty: tuple[str, ...] = ()  # class folders without any image file: left out of ``classes``


EMPTY_CLASS = "class folder without images; left out (not a class)"


def empty_classes_note(root: Path, empty: tuple[str, ...]) -> str:
    """The one-line warning for class folders without images."""
    names = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    return f"{root}: {len(empty)} class folder(s) without images left out: {names}"


def read_label_names(path: Path) -> dict[str, str]:
    """Read a label-names file: JSON ``{"folder": "label text"}`` or CSV with two columns (folder, label)."""
    if not path.is_file():
        raise SgidError(f"label-names file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SgidError(f"label-names file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise SgidError(f"label-names file {path} must be a JSON object mapping folder names to label text")
        return dict(data)
    if path.suffix.lower() in (".csv", ".tsv"):
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if row and any(row)]
        if rows and [c.strip().lower() for c in rows[0][:2]] in (["folder", "label"], ["class", "label"]):
            rows = rows[1:]
        mapping: dict[str, str] = {}
        for number, row in enumerate(rows, start=1):
            if len(row) < 2:
                raise SgidError(f"label-names file {path}, row {number}: expected 'folder,label'")
            mapping[row[0].strip()] = row[1].strip()
        return mapping
    raise SgidError(f"label-names file {path} must end in .json, .csv or .tsv")


def is_run_dir(root: Path) -> bool:
    return (root / RUN_FILE).is_file() and (root / MANIFEST).is_file()


def scan(root: Path, label_names: dict[str, str] | None = None) -> Listing:
    """List the labelled images under ``root`` (an ImageFolder, or an earlier sgid run to chain onto)."""
    root = Path(root)
    if not root.exists():
        raise SgidError(f"input folder not found: {root}")
    if not root.is_dir():
        raise SgidError(f"input is not a folder: {root}")
    if is_run_dir(root):
        return scan_run(root, label_names)
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not class_dirs:
        raise SgidError(f"no class folders in {root}: expected one subfolder per class (e.g. {root}/cat/1.jpg)")
    names = label_names or {}
    unknown = sorted(set(names) - {p.name for p in class_dirs})
    if unknown:
        raise SgidError(f"label-names file names folders that do not exist in {root}: {', '.join(unknown)}")
    labels = {p.name: names.get(p.name) or default_label(p.name) for p in class_dirs}
    sources: list[Source] = []
    skipped: list[tuple[str, str]] = []
    for class_dir in class_dirs:
        for path in _walk_files(class_dir):
            relpath = path.relative_to(root).as_posix()
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((relpath, f"not an image file (extension {path.suffix or 'none'!r})"))
                continue
            sources.append(
                Source(
                    path=path.resolve(),
                    relpath=relpath,
                    class_name=class_dir.name,
                    label=labels[class_dir.name],
                )
            )
    sources.sort(key=lambda s: s.relpath)
    if not sources:
        raise SgidError(f"no image files found under {root}")
    found = {s.class_name for s in sources}
    empty = tuple(p.name for p in class_dirs if p.name not in found)
    skipped.extend((f"{name}/", EMPTY_CLASS) for name in empty)
    skipped.sort()
    classes = tuple(p.name for p in class_dirs if p.name in found)
    return Listing(tuple(sources), tuple(skipped), classes, {c: labels[c] for c in classes}, empty)


def _walk_files(folder: Path) -> list[Path]:
    """Non-hidden files below ``folder`` (recursively, like ImageFolder), sorted."""
    found: list[Path] = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            found.extend(_walk_files(path))
        elif path.is_file():
            found.append(path)
    return found


def scan_run(root: Path, label_names: dict[str, str] | None = None) -> Listing:
    """The images of an earlier sgid run as sources, with provenance back to their real source images."""
    from sgid.manifest import read_run

    sources: list[Source] = []
    skipped: list[tuple[str, str]] = []
    labels: dict[str, str] = {}
    for row in read_run(root).rows:
        label = (label_names or {}).get(row.label) or row.label_text
        labels.setdefault(row.label, label)
        path = root / row.file_name
        if not path.is_file():
            skipped.append((row.file_name, "listed in the earlier run's manifest but missing on disk"))
            continue
        sources.append(
            Source(
                path=path.resolve(),
                relpath=row.file_name,
                class_name=row.label,
                label=labels[row.label],
                origin=row.source,
                origin_sha256=row.source_sha256,
                chain=row.chain,
            )
        )
    if not sources:
        raise SgidError(f"the run in {root} has no images to build on")
    sources.sort(key=lambda s: s.relpath)
    return Listing(tuple(sources), tuple(sorted(skipped)), tuple(sorted(labels)), labels)
