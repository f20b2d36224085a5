"""The input: a folder with one subfolder per class (torchvision ``ImageFolder`` convention).

Files are listed, not read, here; reading happens image by image so one bad file never stops a run. Listing
streams (``os.scandir``, one folder at a time, nothing opened) and shows a count as it goes. Every entry under
the input is used or listed with a reason in ``Listing.skipped`` (and so in ``errors.jsonl``), except names
starting with ``.`` (hidden files and folders, ``.DS_Store``, ``.ipynb_checkpoints``), which are ignored. A
class folder without any image file is left out of the classes (every command alike) and listed in
``Listing.empty`` and in ``Listing.skipped``.

Hostile trees (docs/reliability.md, "Input folders"):

* **Symbolic links are followed**, wherever they point (a dataset of links into a shared image store is common;
  sgid only reads through them). A folder reached a second time (a loop back to a parent, or two links to one
  folder) is listed once and not entered again; a link whose target is missing is listed.
* Folders that cannot be listed and files that are not regular files (FIFOs, sockets, devices: never opened)
  are listed; files that cannot be read are listed when they are read.
* **Names that are not valid UTF-8** (possible on Linux) get a *portable name*: each byte that is not UTF-8
  becomes ``%XX`` and ``%`` becomes ``%25`` (:func:`portable_name`). Class names, relative paths, manifests and
  output files use it, so everything sgid writes is valid UTF-8; :func:`locate` finds the file again from it.
  Valid names (newlines, leading dashes, any script) are used as they are.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sgid import interrupt
from sgid.errors import SgidError
from sgid.images import IMAGE_EXTENSIONS
from sgid.manifest import MANIFEST, RUN_FILE, default_label, loads
from sgid.progress import counter

__all__ = [
    "EMPTY_CLASS",
    "Listing",
    "Source",
    "default_label",
    "empty_classes_note",
    "is_run_dir",
    "locate",
    "portable_name",
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


#: label texts that name no class: "class 001", "cls_3", "n01440764" (a WordNet id), "17"
CODE_LIKE = re.compile(r"^(?:(?:class|cls|label|category|id|c)[\s_-]*)?\d+$|^n\d{8}$", re.IGNORECASE)


def code_like_labels(labels: dict[str, str]) -> list[str]:
    """The label texts that look like codes rather than names (sorted).

    >>> code_like_labels({"a": "class 001", "b": "n01440764", "c": "17", "d": "pink primrose", "e": "class a"})
    ['17', 'class 001', 'n01440764']
    """
    return sorted(text for text in labels.values() if CODE_LIKE.match(text.strip()))


def label_code_warning(labels: dict[str, str], template: str = "A picture of a {label}") -> str | None:
    """One line warning (printed by ``sgid.progress.warn``) that label texts look like codes (they go into
    prompts, filters and the zero-shot row)."""
    codes = code_like_labels(labels)
    if not codes:
        return None
    examples = ", ".join(repr(code) for code in codes[:3]) + (", …" if len(codes) > 3 else "")
    return (
        f"{len(codes)} of {len(labels)} label texts look like codes ({examples}), so prompts read "
        f"{template.replace('{label}', codes[0])!r}; give the real names with --label-names FILE "
        f'(CSV \'folder,label\' or JSON {{"folder": "label"}})'
    )


def read_label_names(path: Path) -> dict[str, str]:
    """Read a label-names file: JSON ``{"folder": "label text"}`` or CSV/TSV with two columns (folder, label),
    with an optional ``folder,label`` (or ``class,label``) header. UTF-8 (a byte-order mark is fine), any line
    ends. Anything else is a one-line :class:`SgidError` naming the file (and the row)."""
    path = Path(path)
    if path.is_dir():
        raise SgidError(f"label-names file {path} is a folder; give the .json, .csv or .tsv file")
    if not path.is_file():
        raise SgidError(f"label-names file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SgidError(f"label-names file {path} is not UTF-8 text (byte {exc.start + 1}); save it as UTF-8") from None
    except OSError as exc:
        raise SgidError(f"label-names file {path} cannot be read ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = loads(text)
        except ValueError as exc:
            raise SgidError(f"label-names file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise SgidError(f"label-names file {path} must be a JSON object mapping folder names to label text")
        blank = next((k for k, v in data.items() if not v.strip()), None)
        if blank is not None:
            raise SgidError(f"label-names file {path}: the label of {blank!r} is empty")
        return dict(data)
    if path.suffix.lower() in (".csv", ".tsv"):
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            rows = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if any(row)]
        except csv.Error as exc:
            raise SgidError(f"label-names file {path} is not valid CSV: {exc}") from None
        if rows and [c.strip().lower() for c in rows[0][:2]] in (["folder", "label"], ["class", "label"]):
            rows = rows[1:]
        mapping: dict[str, str] = {}
        for number, row in enumerate(rows, start=1):
            if len(row) != 2:
                raise SgidError(
                    f"label-names file {path}, row {number}: expected 'folder,label', got {len(row)} column(s)"
                    + ('; quote a label that holds the delimiter ("tabby cat, striped")' if len(row) > 2 else "")
                )
            folder, label = row[0].strip(), row[1].strip()
            if not label:
                raise SgidError(f"label-names file {path}, row {number}: the label of {folder!r} is empty")
            if mapping.setdefault(folder, label) != label:
                raise SgidError(f"label-names file {path}, row {number}: {folder!r} is named twice, differently")
        return mapping
    raise SgidError(f"label-names file {path} must end in .json, .csv or .tsv")


def is_run_dir(root: Path) -> bool:
    return (root / RUN_FILE).is_file() and (root / MANIFEST).is_file()


def portable_name(name: str) -> str:
    """``name`` as sgid writes it: unchanged when it is valid UTF-8; otherwise every byte that is not UTF-8 as
    ``%XX`` (upper-case hex) and ``%`` as ``%25``, so that the result is valid UTF-8 and maps back to the bytes.

    >>> portable_name("chat-noir.png"), portable_name("100%.png")
    ('chat-noir.png', '100%.png')
    >>> portable_name(os.fsdecode(b"caf\\xe9 100%.png"))  # Latin-1 bytes: not UTF-8
    'caf%E9 100%25.png'
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else "%25" if c == "%" else c for c in name)


def locate(root: Path, relpath: str) -> Path:
    """The file or folder under ``root`` that :func:`scan` named ``relpath`` (a relative path made of portable
    names): each part is taken as it is when it exists, else with its ``%XX`` escapes turned back into bytes."""
    path = Path(root)
    for part in relpath.split("/"):
        literal = path / part
        if os.path.lexists(literal) or "%" not in part:
            path = literal
            continue
        raw = re.sub(rb"%([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), part.encode("utf-8"))
        path = path / os.fsdecode(raw)
    return path


def scan(root: Path, label_names: dict[str, str] | None = None, *, progress: bool = False) -> Listing:
    """List the labelled images under ``root`` (an ImageFolder, or an earlier sgid run to chain onto).

    ``progress``: show a running count of the entries listed (on stderr)."""
    root = Path(root)
    if not root.exists():
        raise SgidError(f"input folder not found: {root}")
    if not root.is_dir():
        raise SgidError(f"input is not a folder: {root}")
    if is_run_dir(root):
        return scan_run(root, label_names)
    walker = _Walker(root, progress)
    try:
        top = walker.entries(walker.root, "")
        if top is None:
            raise SgidError(f"cannot list the input folder {root}: {walker.skipped[0][1]}")
        class_dirs = [(name, path) for name, path, kind in top if kind == "dir" and walker.enter(path, name)]
        walker.skipped += [(name, _OUTSIDE) for name, _, kind in top if kind == "file"]
        if not class_dirs:
            raise SgidError(f"no class folders in {root}: expected one subfolder per class (e.g. {root}/cat/1.jpg)")
        names = label_names or {}
        unknown = sorted(set(names) - {name for name, _ in class_dirs})
        if unknown:
            raise SgidError(f"label-names file names folders that do not exist in {root}: {', '.join(unknown)}")
        labels = {name: names.get(name) or default_label(name) for name, _ in class_dirs}
        sources: list[Source] = []
        for class_name, class_dir in class_dirs:
            for relpath, path in walker.files(class_dir, class_name):
                suffix = os.path.splitext(relpath)[1]
                if suffix.lower() not in IMAGE_EXTENSIONS:
                    walker.skipped.append((relpath, f"not an image file (extension {suffix or 'none'!r})"))
                    continue
                sources.append(Source(path, relpath, class_name, labels[class_name]))
    finally:
        walker.close()
    sources.sort(key=lambda s: s.relpath)
    if not sources:
        raise SgidError(f"no image files found under {root}")
    found = {s.class_name for s in sources}
    empty = tuple(name for name, _ in class_dirs if name not in found)
    skipped = walker.skipped + [(f"{name}/", EMPTY_CLASS) for name in empty]
    skipped.sort()
    classes = tuple(name for name, _ in class_dirs if name in found)
    return Listing(tuple(sources), tuple(skipped), classes, {c: labels[c] for c in classes}, empty)


_OUTSIDE = "a file outside any class folder; not used"


class _Walker:
    """Lists a tree one folder at a time: symbolic links followed, each folder entered once, every entry that is
    not used listed with its reason in ``skipped``."""

    def __init__(self, root: Path, progress: bool) -> None:
        self.root = Path(os.path.abspath(root))
        self.skipped: list[tuple[str, str]] = []
        self._seen: dict[tuple[int, int], str] = {}  # (device, inode) of every folder entered -> its relpath
        self._count = counter("listing the input", "entries", quiet=not progress)
        self.enter(self.root, "")

    def close(self) -> None:
        self._count.close()

    def enter(self, folder: Path, relpath: str) -> bool:
        """True the first time ``folder`` (its device and inode) is reached; otherwise it is listed, not entered."""
        try:
            info = os.stat(folder)
        except OSError as exc:
            self.skipped.append((f"{relpath}/", f"unreadable folder: {exc.strerror or exc}"))
            return False
        first = self._seen.setdefault((info.st_dev, info.st_ino), relpath)
        if first == relpath:
            return True
        shown = f"{first}/" if first else "the input folder"
        if not first or relpath.startswith(f"{first}/"):
            why = f"a symbolic link loop back to {shown}; not followed"
        else:
            why = f"the same folder as {shown} (reached through a symbolic link); listed once"
        self.skipped.append((f"{relpath}/", why))
        return False

    def entries(self, folder: Path, relpath: str) -> list[tuple[str, Path, str]] | None:
        """(relpath, path, "dir" | "file") of ``folder``'s usable entries, sorted by name; the others are listed.
        None when the folder cannot be listed."""
        prefix = f"{relpath}/" if relpath else ""
        found: list[tuple[str, Path, str]] = []
        names: dict[str, str] = {}  # portable name -> the name on disk
        try:
            with os.scandir(folder) as listing:
                raw = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            self.skipped.append((f"{relpath}/" if relpath else "./", f"unreadable folder: {exc.strerror or exc}"))
            return None
        for entry in raw:
            interrupt.check()
            self._count.update(1)
            if entry.name.startswith("."):
                continue
            name = portable_name(entry.name)
            rel = prefix + name
            if names.setdefault(name, entry.name) != entry.name:
                shown = prefix + os.fsencode(entry.name).decode("utf-8", "backslashreplace")
                why = f"its name is not UTF-8, and written as {name!r} it is another file's name; rename one of them"
                self.skipped.append((shown, why))
                continue
            kind, why = _kind(entry)
            if kind is None:
                self.skipped.append((rel, why))
            else:
                found.append((rel, Path(entry.path), kind))
        return found

    def files(self, folder: Path, relpath: str) -> Iterator[tuple[str, Path]]:
        """Every file below ``folder`` (depth first, sorted by name), each folder entered once."""
        entries = self.entries(folder, relpath)
        for rel, path, kind in entries or []:
            if kind == "file":
                yield rel, path
            elif self.enter(path, rel):
                yield from self.files(path, rel)


def _kind(entry: os.DirEntry[str]) -> tuple[str | None, str]:
    """("dir" | "file", "") for an entry to use, (None, why) for one to list: symbolic links are followed. The
    file type comes from the folder listing itself; only links and odd entries cost a ``stat``."""
    try:
        if entry.is_dir():
            return "dir", ""
        if entry.is_file():
            return "file", ""
        if entry.is_symlink():
            os.stat(entry.path)  # raises: the reason below
        mode = entry.stat(follow_symlinks=True).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "a symbolic link loop (the link leads back to itself); not followed"
        if exc.errno == errno.ENOENT:
            return None, "a broken symbolic link (its target does not exist)"
        return None, f"unreadable: {exc.strerror or exc}"
    return None, f"not a regular file ({_special(mode)}); never opened"


def _special(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device")):
        if test(mode):
            return name
    return "a block device" if stat.S_ISBLK(mode) else "not a file"


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
