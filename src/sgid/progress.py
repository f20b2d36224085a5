"""Progress bars (rate and ETA) on stderr, silenced by ``--quiet``."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def bar(total: int, desc: str, unit: str, quiet: bool) -> Any:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=quiet,
        file=sys.stderr,
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )


def counter(desc: str, unit: str, quiet: bool, delay: float = 1.0) -> Any:
    """A running count without a known total (e.g. files listed so far), with its rate; shown only once it has
    run ``delay`` seconds, so quick work stays silent."""
    return tqdm(
        total=None,
        delay=delay,
        desc=desc,
        unit=unit,
        disable=quiet,
        file=sys.stderr,
        dynamic_ncols=True,
        bar_format="{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]",
    )


def note(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something the user should know before trusting the result: one line on stderr, even with --quiet."""
    print(f"sgid: warning: {message}", file=sys.stderr, flush=True)


def counted(number: int, one: str, many: str) -> str:
    """``1 image``, ``2 images``: a count with the right noun."""
    return f"{number} {one if number == 1 else many}"
