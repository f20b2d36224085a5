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


def note(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something the user should know before trusting the result: one line on stderr, even with --quiet."""
    print(f"sgid: warning: {message}", file=sys.stderr, flush=True)
