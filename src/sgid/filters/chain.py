"""Filters applied one after another, and the per-image decisions they add up to.

Composition: the filters run in the order given. Filter *i* scores every generated image, but decides only
about the images kept by filters 1..i-1, and computes its statistics (per-label means, best-of-k ranks,
realfake's training set) over those images. ``--filters label,prompt`` therefore gives the same result as
filtering with ``label`` and then filtering the kept images with ``prompt``; the order matters because the
means change as images leave. An image's ``reason`` names the first filter that rejected it; the filters after
that one still score it (its ``<filter>_decision`` is null), so decisions.jsonl holds every filter's score for
every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgid.filters.base import Filter, FilterInput, FilterResult

KEEP = "keep"
REJECT = "reject"


@dataclass(frozen=True)
class ChainResult:
    data: FilterInput
    results: list[FilterResult]  # one per filter, in order
    kept: np.ndarray  # (N,) bool: kept by every filter
    rejected_by: np.ndarray  # (N,) int: index of the first filter that rejected the image, -1 if kept

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.results]

    def decision_rows(self) -> list[dict[str, Any]]:
        """One row per generated image for decisions.jsonl, in manifest order."""
        return [self._row(i) for i in range(len(self.data))]

    def _row(self, i: int) -> dict[str, Any]:
        entry = self.data.generated[i]
        row: dict[str, Any] = {
            "file_name": entry.file_name,
            "label": entry.label,
            "source": entry.source,
            "k": entry.k,
        }
        for result in self.results:
            row[f"{result.name}_score"] = _number(result.scores.values[i])
            row[f"{result.name}_decision"] = (
                (REJECT if result.verdict.reject[i] else KEEP) if result.judged[i] else None
            )
            for column, values in result.scores.extra.items():
                row[column] = _number(values[i]) if isinstance(values[i], float) else values[i]
        row["decision"] = KEEP if self.kept[i] else REJECT
        row["reason"] = self._reason(i)
        return row

    def _reason(self, i: int) -> str:
        if not self.kept[i]:
            reason = self.results[int(self.rejected_by[i])].verdict.reasons[i]
            return reason or f"rejected by {self.results[int(self.rejected_by[i])].name}"
        if not self.results:
            return "no filters"
        unscored = [
            f"{r.name} ({r.scores.missing or 'no score'})" for r in self.results if not np.isfinite(r.scores.values[i])
        ]
        scored = [r.name for r in self.results if np.isfinite(r.scores.values[i])]
        parts = [f"passed {', '.join(scored)}"] if scored else []
        if unscored:
            parts.append(f"not scored by {', '.join(unscored)}")
        return "; ".join(parts)


def run_chain(filters: Sequence[Filter], data: FilterInput) -> ChainResult:
    """Apply ``filters`` in order; each decides only about the images every earlier one kept."""
    active = np.ones(len(data), dtype=bool)
    rejected_by = np.full(len(data), -1, dtype=np.int64)
    results: list[FilterResult] = []
    for position, filter_ in enumerate(filters):
        result = filter_.apply(data, active.copy())
        rejected_by[result.verdict.reject] = position
        active &= ~result.verdict.reject
        results.append(result)
    return ChainResult(data, results, active, rejected_by)


def _number(value: Any) -> float | None:
    """A JSON-safe float (NaN -> None), rounded to 6 decimals."""
    value = float(value)
    return round(value, 6) if np.isfinite(value) else None
