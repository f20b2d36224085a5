"""The folders sgid commands own and write: an augment run, an evaluation, a concepts folder.

Each is an :class:`OwnedFolder`: while a command writes to it, it holds an exclusive lock (a second writer is
refused in one line); a folder that holds an earlier job of the same command is resumed when that job had the
same settings (its identity, recorded in the folder's marker file) and refused otherwise, unless
``--overwrite``, which removes only what the command wrote; a folder that is not empty and holds no marker is
someone else's and is refused. Files are written with :func:`atomic_write`: a reader sees the old file or the
whole new one, never half of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, ClassVar

from sgid import interrupt
from sgid.errors import RunDirError
from sgid.manifest import WRITER_LOCK

LOCK = WRITER_LOCK


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


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class OwnedFolder:
    """A folder one sgid command owns while it writes there (see the module docstring).

    A subclass names its marker file, its lock file and its messages, reads its marker (``read_marker``) and
    says what it wrote (``clear``); this class makes the checks, in this order: not a folder, then (under the
    lock, in :meth:`claim`) an earlier job with other settings or a foreign folder.
    """

    #: The file that records the job and its identity; its presence marks the folder as this command's.
    marker: ClassVar[str]
    #: The lock file (the only entry an otherwise empty folder may hold).
    lock_name: ClassVar[str] = LOCK
    #: What the folder holds, in the refusal of other settings ("a run").
    holds: ClassVar[str]
    #: Where the marker records the identity (``key`` and ``key + "_sha256"``), and what the refusal names when no
    #: single setting differs.
    identity_key: ClassVar[str] = "identity"
    unnamed: ClassVar[str] = "identity"
    #: The refusals, formatted with ``path``: another process holds the lock; a non-empty folder without marker.
    busy: ClassVar[str] = "another sgid run is writing to {path}; wait for it or choose another --out"
    foreign: ClassVar[str]

    def __init__(self, path: str | Path, identity: dict[str, Any], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.identity = identity
        self.overwrite = overwrite
        self._lock = FolderLock(self.path, self.lock_name)

    def read_marker(self) -> dict[str, Any]:
        """The parsed marker file, or a one-line :class:`RunDirError` saying why it cannot be used."""
        raise NotImplementedError

    def clear(self) -> None:
        """Remove what an earlier job of this command wrote here, and nothing else (``--overwrite``)."""
        raise NotImplementedError

    def holds_job(self) -> bool:
        return (self.path / self.marker).exists()

    def check(self) -> bool | None:
        """Refuse (read-only) a folder that is not a folder, holds a job with other settings (unless
        ``overwrite``) or holds foreign files. None: no earlier job; False: the same job (resume); True: a job
        with other settings, which ``overwrite`` replaces."""
        if not self.path.exists():
            return None
        if not self.path.is_dir():
            raise RunDirError(f"--out {self.path} exists and is not a folder")
        if self.holds_job():
            return check_identity(
                self.path / self.marker,
                self.identity,
                self.read_marker(),
                overwrite=self.overwrite,
                holds=self.holds,
                key=self.identity_key,
                unnamed=self.unnamed,
            )
        if any(p.name != self.lock_name for p in self.path.iterdir()):
            raise RunDirError(self.foreign.format(path=self.path))
        return None

    def claim(self) -> bool | None:
        """Make the folder, take its lock, then :meth:`check` it (the lock is given back when the check
        refuses). Returns what :meth:`check` returns."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(self.busy.format(path=self.path))
        try:
            return self.check()
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Give the lock back."""
        self._lock.release()

    def stamp(self) -> dict[str, Any]:
        """The identity as the marker records it: ``{key: identity, key + "_sha256": its hash}``."""
        return {self.identity_key: self.identity, f"{self.identity_key}_sha256": identity_hash(self.identity)}

    def remove(self, names: Iterable[str]) -> None:
        """Remove the named files and folders of this folder (what the command writes under fixed names)."""
        for name in names:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """Temporary files a killed writer left (``.<name>.tmp-<pid>``, see :func:`atomic_write`)."""
        for stale in self.path.rglob(".*.tmp-*"):
            stale.unlink(missing_ok=True)

    def write(self, relpath: str, data: bytes) -> Path:
        """Write ``data`` atomically to ``relpath`` inside the folder (folders created)."""
        path = self.path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        return path
