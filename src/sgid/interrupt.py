"""SIGTERM and SIGINT: stop at a clean point, keep everything finished, say how to resume.

A scheduler's SIGTERM (or Ctrl-C) must never lose finished work or leave a half-written file. ``sgid``
handles both signals in the driver process (the one that writes; engines' workers never touch the output):

* **Graceful** (inside :func:`graceful`, what ``sgid augment`` does while it runs): the first signal only
  records itself. The driver finishes the batch on its accelerator (the local engine) or stops waiting for
  the tasks on other workers (the Ray engine, :func:`raising`), its writer commits every finished image, the
  manifests are written, the lock is released and :class:`Interrupted` ends the command with exit code
  ``128 + signal`` (130 for SIGINT, 143 for SIGTERM) and a line saying how to resume. Work that is not a
  finished image (a batch not started, a task on another worker) is dropped cleanly: nothing of it is
  written, and a rerun makes it with the same seeds.
* **Immediate** (every other command, once the CLI installed the handlers): the first signal raises
  :class:`Interrupted` where the program is, like ``KeyboardInterrupt``; ``finally`` blocks release locks and
  remove temporary files, and every store writes whole files only (temporary name, then rename).
* A **second** signal exits at once (``os._exit``), in either mode, once the item being committed (if any:
  milliseconds, :func:`committing`) is journaled, after removing the temporary files being written
  (:func:`writing`). Finished images and journal lines are on disk; a rerun resumes.

Handlers are only installed from the main thread (Python delivers signals there); elsewhere the defaults
stay. A signal the process was started with ignored (SIG_IGN: a background job of a shell script) stays ignored.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []  # signals received since the handlers were installed
_graceful = 0  # > 0 while inside graceful()
_raising = 0  # > 0 while inside raising(): a graceful stop does not wait (the work in flight is elsewhere)
_installed: dict[int, Any] = {}  # signal -> the handler we replaced
_temporaries: set[Path] = set()  # files being written right now (removed by a second signal)
_temporaries_lock = threading.Lock()
_commit_lock = threading.RLock()  # held while a finished item is committed (its file, then its journal line)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = message or f"stopped by {signal_name(signum)}; rerun the same command to resume"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover - only the two signals above are handled
        return f"signal {signum}"


def _handler(signum: int, frame: FrameType | None) -> None:
    del frame
    if _received:
        _exit_now(signum)
    _received.append(signum)
    if _graceful:
        doing = "dropping the tasks in flight" if _raising else "finishing the batch in flight"
        _say(f"sgid: {signal_name(signum)} received: {doing} and writing the manifests (signal again to stop at once)")
        if not _raising:
            return
    raise Interrupted(signum)


def _exit_now(signum: int) -> None:
    _commit_lock.acquire(timeout=10)  # let a commit in flight end: no image is left without its journal line
    with _temporaries_lock:
        for path in list(_temporaries):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
    name = signal_name(signum)
    _say(f"sgid: second {name}: stopped at once; finished work is kept, rerun the same command to resume")
    os._exit(128 + signum)


def _say(line: str) -> None:
    """One line on stderr, from a signal handler. The handler can run in the middle of a write to ``sys.stderr``
    (the signal interrupts that write, and Python runs handlers there), and a buffered stream refuses a write from
    inside its own write ("reentrant call"): a Ctrl-C landing in a progress line would end in a traceback. So the
    line goes to the file descriptor underneath, which has no lock to re-enter."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a script's own stream object): it takes the line
        print(line, file=sys.stderr, flush=True)
        return
    try:
        os.write(fd, (line + "\n").encode("utf-8", "backslashreplace"))
    except OSError:  # stderr closed or a broken pipe: nothing to say it on
        pass


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def handlers() -> Iterator[None]:
    """Install sgid's SIGINT/SIGTERM handlers for the block (main thread only; nested calls are no-ops)."""
    if _installed or not _in_main_thread():
        yield
        return
    _received.clear()
    for signum in SIGNALS:
        # An ignored signal stays ignored (Unix convention: a shell starts background jobs with SIGINT ignored,
        # so that Ctrl-C in the terminal does not stop them; nohup-like wrappers do the same).
        if signal.getsignal(signum) is not signal.SIG_IGN:
            _installed[signum] = signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, previous in _installed.items():
            signal.signal(signum, previous)
        _installed.clear()
        _received.clear()


@contextmanager
def graceful() -> Iterator[None]:
    """Inside the block a first signal only asks to stop (see :func:`stop_requested`, :func:`check`).

    Installs the handlers for the block if nobody did (the Python API), so ``sgid.augment`` stops cleanly on
    Ctrl-C too. The code in the block decides where it can stop; a signal that arrives after the last such
    point lets the work finish.
    """
    global _graceful
    with handlers():
        _graceful += 1
        try:
            yield
        finally:
            _graceful -= 1


@contextmanager
def raising() -> Iterator[None]:
    """Inside the block, a first signal raises :class:`Interrupted` at once even in graceful mode: for a driver
    waiting on work done elsewhere (Ray workers), which a stop drops cleanly (nothing of it is written yet)."""
    global _raising
    check()
    _raising += 1
    try:
        yield
    finally:
        _raising -= 1


def reassert() -> None:
    """Put sgid's handlers back if a library replaced them (``ray.init`` installs its own SIGTERM handler)."""
    if _installed and _in_main_thread():
        for signum in _installed:
            if signal.getsignal(signum) is not _handler:
                signal.signal(signum, _handler)


def stop_requested() -> bool:
    """True once a signal asked the command to stop (graceful mode)."""
    return bool(_received)


def check() -> None:
    """Raise :class:`Interrupted` if a signal asked the command to stop."""
    if _received:
        raise Interrupted(_received[0])


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask the running command to stop as a first signal would (tests and embedding applications)."""
    if not _received:
        _received.append(signum)


@contextmanager
def committing() -> Iterator[None]:
    """Hold off a second signal's immediate exit while one item is committed (a file and its journal line)."""
    with _commit_lock:
        yield


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Register ``path`` as a temporary file being written, so that a second signal removes it."""
    with _temporaries_lock:
        _temporaries.add(path)
    try:
        yield
    finally:
        with _temporaries_lock:
            _temporaries.discard(path)
