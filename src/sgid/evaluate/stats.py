"""Per-method verdicts: mean ± std over seeds and a paired t-test against the baseline (paper, table 1).

Runs pair up by seed: seed s of a method and seed s of the baseline share the training subset and the network's
initialisation, so the test is ``scipy.stats.ttest_rel(method, baseline)`` over the seeds both have. ``std`` is
the sample standard deviation (ddof=1). The "Avg" column averages each seed's accuracy over the datasets (only
seeds and methods present in every dataset) and tests those averages the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sgid.evaluate.methods import BASELINE

ALPHA = 0.05
AVG = "Avg"


@dataclass(frozen=True)
class RunRecord:
    """One finished run (runs/<dataset>/<variant>/seed<k>.json)."""

    dataset: str
    variant: str  # folder-safe name, e.g. "generated@replace-p0.5"
    label: str  # row label, e.g. "generated [replace p=0.5]"
    method: str
    seed: int
    accuracy: float  # fraction of the test set classified correctly
    per_class: dict[str, float | None]  # class name -> accuracy (None: no test image of that class)
    mix: str | None = None
    proportion: float | None = None
    reference: bool = False  # an untrained reference row (zero-shot CLIP): not tested
    details: dict[str, Any] = field(default_factory=dict)  # sizes, lr, epochs, time, config

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        return cls(**data)


@dataclass(frozen=True)
class Summary:
    """One cell of results.md: a variant on a dataset (or on average)."""

    dataset: str
    variant: str
    label: str
    method: str
    mix: str | None
    proportion: float | None
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    mean: float
    std: float | None  # None with fewer than two seeds
    p_value: float | None  # paired t-test vs the baseline; None for the baseline, references, < 2 pairs
    delta: float | None  # mean difference to the baseline over the paired seeds
    significant: bool  # p < 0.05
    per_class: dict[str, float | None]  # mean over seeds
    reference: bool = False

    @property
    def mark(self) -> str:
        """``*`` significantly better than the baseline, ``†`` significantly worse, else nothing."""
        if not self.significant or self.delta is None:
            return ""
        return "*" if self.delta > 0 else "†"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mark"] = self.mark
        return data


def paired_test(method: Sequence[float], baseline: Sequence[float]) -> float | None:
    """``scipy.stats.ttest_rel`` p-value, or None when it is undefined (fewer than two pairs, or every
    difference equal so the variance is zero)."""
    from scipy import stats

    if len(method) < 2:
        return None
    with np.errstate(all="ignore"):
        p = float(stats.ttest_rel(np.asarray(method, float), np.asarray(baseline, float)).pvalue)
    return None if math.isnan(p) else p


def _summary(
    dataset: str,
    first: RunRecord,
    by_seed: dict[int, float],
    per_class: dict[str, float | None],
    baseline: dict[int, float] | None,
) -> Summary:
    seeds = tuple(sorted(by_seed))
    values = tuple(by_seed[s] for s in seeds)
    p_value = delta = None
    if baseline is not None and first.variant != BASELINE and not first.reference:
        paired = [s for s in seeds if s in baseline]
        if paired:
            delta = float(np.mean([by_seed[s] - baseline[s] for s in paired]))
            p_value = paired_test([by_seed[s] for s in paired], [baseline[s] for s in paired])
    return Summary(
        dataset=dataset,
        variant=first.variant,
        label=first.label,
        method=first.method,
        mix=first.mix,
        proportion=first.proportion,
        seeds=seeds,
        accuracies=values,
        mean=float(np.mean(values)),
        std=float(np.std(values, ddof=1)) if len(values) > 1 else None,
        p_value=p_value,
        delta=delta,
        significant=p_value is not None and p_value < ALPHA,
        per_class=per_class,
        reference=first.reference,
    )


def _mean_per_class(records: Sequence[RunRecord]) -> dict[str, float | None]:
    names = list(records[0].per_class)
    out: dict[str, float | None] = {}
    for name in names:
        values = [r.per_class.get(name) for r in records]
        present = [v for v in values if v is not None]
        out[name] = float(np.mean(present)) if present else None
    return out


def summarize(records: Sequence[RunRecord]) -> list[Summary]:
    """Summaries per (dataset, variant), then the "Avg" summaries, in the order variants first appear."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.dataset, record.variant)].append(record)
    datasets = list(dict.fromkeys(r.dataset for r in records))
    order = list(dict.fromkeys(r.variant for r in sorted(records, key=lambda r: r.variant != BASELINE)))
    accuracy = {key: {r.seed: r.accuracy for r in group} for key, group in groups.items()}
    out: list[Summary] = []
    for dataset in datasets:
        baseline = accuracy.get((dataset, BASELINE))
        for variant in order:
            group = groups.get((dataset, variant))
            if group:
                out.append(_summary(dataset, group[0], accuracy[(dataset, variant)], _mean_per_class(group), baseline))
    out.extend(_averages(groups, accuracy, datasets, order))
    return out


def _averages(
    groups: dict[tuple[str, str], list[RunRecord]],
    accuracy: dict[tuple[str, str], dict[int, float]],
    datasets: list[str],
    order: list[str],
) -> list[Summary]:
    averaged: dict[str, dict[int, float]] = {}
    for variant in order:
        if not all((d, variant) in accuracy for d in datasets):
            continue
        common = set.intersection(*(set(accuracy[(d, variant)]) for d in datasets))
        averaged[variant] = {s: float(np.mean([accuracy[(d, variant)][s] for d in datasets])) for s in common}
    baseline = averaged.get(BASELINE)
    return [
        _summary(AVG, groups[(datasets[0], variant)][0], by_seed, {}, baseline)
        for variant, by_seed in averaged.items()
        if by_seed
    ]
