"""Errors a user can act on.

Every error that is the user's to fix (a bad option, a missing folder, weights that cannot be found) is a
:class:`SgidError`. The command line prints its message as one line on stderr and exits with code 2; the
Python API lets it propagate.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SgidError(Exception):
    """A problem with the user's input, options or environment, reported as one line (exit code 2).

    ``details``: one short line per item when several problems are reported at once (e.g. every missing model);
    the CLI prints each on its own line under the message."""

    exit_code = 2

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        # Keep it to one line: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))
        self.details = tuple(" ".join(str(line).split()) for line in details)


class ModelLoadError(SgidError):
    """A model's weights could not be loaded (not downloaded, wrong path, not safetensors)."""


class RunDirError(SgidError):
    """The output directory holds a different run or something that is not an sgid run."""


class DiskFullError(SgidError):
    """The disk (or a quota, or the file-size limit) ran out while writing; nothing written is lost, and
    rerunning the same command once there is space resumes. Exit code 1: not a usage error."""

    exit_code = 1


#: errno values that mean "no room to write" (no space, file too large for RLIMIT_FSIZE, quota exceeded),
#: with how the one-line message says it.
DISK_FULL = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file size limit is reached",
    errno.EDQUOT: "the disk quota is exceeded",
}


def reason(exc: BaseException, limit: int = 200, typed: bool = False) -> str:
    """An exception's first line for a one-line message (after its type's name with ``typed``), or the type's
    name when it says nothing.

    >>> reason(ValueError("bad header\\nmore")), reason(IndexError()), reason(EOFError(), typed=True)
    ('bad header', 'IndexError', 'EOFError')
    >>> reason(ValueError("bad header"), typed=True)
    'ValueError: bad header'
    """
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0][:limit]}" if typed else lines[0][:limit]


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


@contextmanager
def disk_full_is_one_line(where: Path, kept: Callable[[], str]) -> Iterator[None]:
    """Turn running out of space while writing into ``where`` into one :class:`DiskFullError` line:
    ``no space left on WHERE (reason); KEPT, rerun to resume``; ``kept()`` says what is safe on disk."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(
            f"no space left on {where} ({DISK_FULL.get(exc.errno or 0)}); {kept()}, rerun to resume"
        ) from None


class MissingDependencyError(SgidError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


def need(value: T | None, message: str) -> T:
    """``value``, or a one-line :class:`SgidError`: for options a check already requires (never an ``assert``,
    which ``python -O`` removes and which would give a traceback instead of a message)."""
    if value is None:
        raise SgidError(message)
    return value


def require(module: str, extra: str):
    """Import ``module`` or fail with a message naming the ``pip install 'sgid[extra]'`` to run."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
        raise MissingDependencyError(
            f"{module} is needed for this; install it with: pip install 'sgid[{extra}]' ({exc})"
        ) from exc
