"""One rule for every command's ``--out``: it never lands inside data, and never takes over a foreign folder.

What a command writes into a folder it (or a later command) reads becomes part of that data: an evaluation
inside the training folder is trained on as an extra class ``eval`` next time, a concepts folder inside the input
is listed as a class ``concepts``. So every command calls :func:`check_out_dir` before any model loads, with the
folders it reads; it refuses, in one line,

- an ``--out`` equal to, inside, or containing a folder the command reads (training, test, validation, generated,
  input, reference, pool …);
- an ``--out`` inside another sgid output folder (an augment run, an evaluation, a concepts folder …);
- an ``--out`` that exists and is not a folder, or is a non-empty folder that is not this command's own output
  (``owned``), so nothing is mixed into someone else's files.

>>> check_out_dir("data/train/eval", [("the training folder", "data/train")], command="evaluate")  # doctest: +ELLIPSIS
Traceback (most recent call last):
sgid.errors.SgidError: --out data/train/eval is inside the training folder data/train; what sgid evaluate ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from sgid.errors import SgidError

#: Files that together mark a folder as an sgid output: an augment (or filter) run, an evaluation, concepts,
#: metrics.
OUTPUT_MARKERS = (
    ("run.json", "metadata.jsonl"),
    ("evaluation.json",),
    ("concepts.json",),
    ("metrics.json", "metrics.md"),
)
#: Entries an sgid command may leave in an otherwise empty folder (its lock files).
INTERNAL_PREFIX = ".sgid-"

Folder = str | Path | None


def check_out_dir(
    out: str | Path,
    reads: Iterable[tuple[str, Folder]] = (),
    *,
    command: str,
    owned: Callable[[Path], bool] | None = None,
) -> None:
    """Refuse an ``out`` that would mix with data (see the module docstring); ``reads`` names each folder the
    command reads (``("the training folder", path)``, ``None`` entries are skipped); ``owned(out)`` tells a
    non-empty ``out`` that holds this command's own earlier output (resumed or replaced) from a foreign one."""
    shown = Path(out)
    target = shown.expanduser().resolve()
    for what, folder in reads:
        if folder is None:
            continue
        resolved = Path(folder).expanduser().resolve()
        if target == resolved or resolved in target.parents:
            raise SgidError(
                f"--out {shown} is inside {what} {folder}; what sgid {command} writes there would become part of "
                f"that data: choose a folder outside it"
            )
        if target in resolved.parents:
            raise SgidError(f"--out {shown} contains {what} {folder}; choose a separate folder")
    for parent in target.parents:
        marker = next((m for m in OUTPUT_MARKERS if all((parent / name).is_file() for name in m)), None)
        if marker is not None:
            raise SgidError(
                f"--out {shown} is inside {parent}, an sgid output folder ({marker[0]}); choose a folder outside it"
            )
    if not target.exists():
        _check_creatable(shown, target)
        return
    if not target.is_dir():
        raise SgidError(f"--out {shown} exists and is not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise SgidError(f"--out {shown}: no permission to write in it")
    if owned is not None and not is_empty(target) and not owned(target):
        raise SgidError(
            f"--out {shown} is not empty and holds no sgid {command} output; choose a new or empty folder "
            f"(sgid never writes into other files)"
        )


def _check_creatable(shown: Path, target: Path) -> None:
    """A new ``out`` must be creatable: its nearest existing ancestor a folder this process may write in."""
    ancestor = next((parent for parent in target.parents if parent.exists()), None)
    if ancestor is None:
        return
    if not ancestor.is_dir():
        raise SgidError(f"--out {shown} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SgidError(f"--out {shown} cannot be created: no permission to write in {ancestor}")


def is_empty(folder: Path) -> bool:
    """No entries other than sgid's own lock files."""
    return all(p.name.startswith(INTERNAL_PREFIX) for p in folder.iterdir())


def has_file(name: str) -> Callable[[Path], bool]:
    """``owned`` for commands whose output folder is marked by one file (``run.json``, ``evaluation.json`` …)."""
    return lambda folder: (folder / name).is_file()
