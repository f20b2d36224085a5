"""Progress on stderr, silenced by ``--quiet``: bars with rate and ETA on a terminal, plain lines in a log.

On a terminal, :func:`bar` is a tqdm bar. When stderr is not a terminal (a log file, a pipe, CI), it writes whole
lines instead — the bar's state every ``LINE_INTERVAL`` seconds and once at the end — so a log never holds
carriage returns or cursor escapes. :func:`end_lines` closes the bars still open (the CLI calls it before
"interrupted", so that line starts on a line of its own).
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

LINE_INTERVAL = 30.0  # seconds between two lines of the same bar in a log
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

COUNT_FORMAT = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]"

_open: weakref.WeakSet[Any] = weakref.WeakSet()


def _tqdm(total: int | None, desc: str, unit: str, quiet: bool, **options: Any) -> Any:
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True, **options)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bar(total: int, desc: str, unit: str, quiet: bool, *, leave: bool = True) -> Any:
    """A progress bar (``update``, ``set_postfix``, ``set_description_str``, ``close``, context manager)."""
    if stderr_is_terminal() or quiet:
        progress: Any = _tqdm(total, desc, unit, quiet, leave=leave, bar_format=BAR_FORMAT)
    else:
        progress = LineProgress(total, desc, unit)
    if not quiet:
        _open.add(progress)
    return progress


class LineProgress:
    """tqdm's interface, written as whole lines: ``desc: 40/100 img (40%) [12s, 3.33 img/s, eta 18s]``."""

    def __init__(
        self, total: int | None, desc: str, unit: str, interval: float = LINE_INTERVAL, delay: float = 0.0
    ) -> None:
        self.total, self.desc, self.unit, self.interval, self.delay = total, desc, unit, interval, delay
        self.n = 0
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and (self.total is None or self.n < self.total):
            self.last = now
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # a bar that never moved (the work failed at once), or quick work under ``delay``, says nothing
            if self.n and time.monotonic() - self.started >= self.delay:
                self._write()

    def _write(self) -> None:
        elapsed = time.monotonic() - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [duration(elapsed), f"{rate:.3g} {self.unit}/s"]
        if self.total is not None and self.n < self.total and rate > 0:
            parts.append(f"eta {duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        if self.total is None:  # a count (counter())
            line = f"{self.desc}: {self.n} {self.unit} [{', '.join(parts)}]"
        else:
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            line = f"{self.desc}: {self.n}/{self.total} {self.unit}{share} [{', '.join(parts)}]"
        print(line, file=sys.stderr, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def end_lines() -> None:
    """Close every progress bar still open, so what follows starts on a line of its own."""
    for progress in list(_open):
        try:
            progress.close()
        except Exception:  # noqa: BLE001 - closing a bar must never hide the reason we are closing it
            pass
    _open.clear()


def counter(desc: str, unit: str, quiet: bool, delay: float = 1.0) -> Any:
    """A running count without a known total (e.g. files listed so far), with its rate; shown only once it has
    run ``delay`` seconds, so quick work stays silent. Whole lines when stderr is not a terminal, like bar()."""
    if stderr_is_terminal() or quiet:
        progress: Any = _tqdm(None, desc, unit, quiet, delay=delay, bar_format=COUNT_FORMAT)
    else:
        progress = LineProgress(None, desc, unit, delay=delay)
    if not quiet:
        _open.add(progress)
    return progress


def note(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


#: an estimate above this names the flags that make the job small
LONG_JOB_SECONDS = 600.0


def estimate_note(
    seconds: float, done: float, planned: float, work: str, measured_on: str, hints: Sequence[str], quiet: bool
) -> None:
    """``estimate: about 12m30s for the planned training (measured on its first epoch)``: ``done`` of the
    ``planned`` units took ``seconds``; past :data:`LONG_JOB_SECONDS` the ``hints`` (flags) follow."""
    if done <= 0 or seconds <= 0:
        return
    total = seconds / done * planned
    line = f"estimate: about {duration(total)} for {work} (measured on {measured_on})"
    if total > LONG_JOB_SECONDS and hints:
        line += f"; to make it small: {' '.join(hints)}"
    note(line, quiet)


def warn(message: str) -> None:
    """Something the user should know before trusting the result: one line on stderr, even with --quiet."""
    print(f"sgid: warning: {message}", file=sys.stderr, flush=True)


def counted(number: int, one: str, many: str) -> str:
    """``1 image``, ``2 images``: a count with the right noun."""
    return f"{number} {one if number == 1 else many}"
