"""Markdown pieces shared by the reports of ``sgid filter`` and ``sgid metrics``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def quoted(note: str | None) -> list[str]:
    """A note as a quote and a blank line (the tiny-models warning), or no lines without one."""
    return [f"> {note}", ""] if note else []


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A table's lines: the header, its rule, then one line per row (each cell as ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines
