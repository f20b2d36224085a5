"""Per-method verdicts: mean ± std over seeds and a paired comparison with a reference row (paper, table 1).

Runs pair up by seed: seed s of a method and seed s of the reference share the training subset and the network's
initialisation, so the test is ``scipy.stats.ttest_rel(method, reference)`` over the seeds both have. Next to its
p-value each row reports the mean paired difference d̄ with its 95% confidence interval, d̄ ± t(0.975, n−1)·s_d/√n,
and an effect size, Cohen's d_z = d̄ / s_d (the standardised mean of the paired differences; s_d their sample
standard deviation). ``std`` is the sample standard deviation (ddof=1).

What each row is compared to (``--compare-to``): ``baseline`` (default), ``best`` (the row with the highest mean in
that column; that row itself is compared to the runner-up, so its mark says whether the winner is significantly
ahead), or a named method. ``--correction holm`` adjusts the p-values of each column (the rows compared in that
column are one family) with Holm's step-down method; marks then use the adjusted p-values.

The "Avg" column averages each seed's accuracy over the datasets (only seeds and methods present in every dataset)
and tests those averages the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sgid.errors import SgidError
from sgid.evaluate.methods import BASELINE

ALPHA = 0.05
CONFIDENCE = 0.95
AVG = "Avg"
BEST = "best"
CORRECTIONS = ("none", "holm")
EFFECT_SIZE = "Cohen's d_z: mean paired difference / standard deviation of the paired differences"


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
    p_value: float | None  # paired t-test vs ``compared_to``; None for the reference, references rows, < 2 pairs
    delta: float | None  # mean difference to ``compared_to`` over the paired seeds
    significant: bool  # p < 0.05 (the Holm-adjusted p with --correction holm)
    per_class: dict[str, float | None]  # mean over seeds
    reference: bool = False
    compared_to: str | None = None  # the variant this row is tested against (None: not tested)
    ci95: tuple[float, float] | None = None  # 95% confidence interval of ``delta``
    effect_size: float | None = None  # Cohen's d_z of the paired differences
    p_adjusted: float | None = None  # Holm-adjusted p-value (None without --correction holm)
    pairs: int = 0  # seeds paired with ``compared_to``

    @property
    def mark(self) -> str:
        """``*`` significantly better than ``compared_to``, ``†`` significantly worse, else nothing."""
        if not self.significant or self.delta is None:
            return ""
        return "*" if self.delta > 0 else "†"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mark"] = self.mark
        return data


@dataclass(frozen=True)
class Comparison:
    """A row against its reference over the seeds both have."""

    pairs: int
    delta: float
    p_value: float | None  # scipy.stats.ttest_rel; None when undefined
    ci95: tuple[float, float] | None  # None with fewer than two pairs or identical differences
    effect_size: float | None  # Cohen's d_z; None when undefined


def compare(method: Sequence[float], reference: Sequence[float]) -> Comparison:
    """Paired difference ``method − reference``: mean, t-test p-value, 95% interval, Cohen's d_z.

    >>> c = compare([0.55, 0.56, 0.55, 0.57, 0.54], [0.50, 0.52, 0.49, 0.51, 0.50])
    >>> round(c.delta, 3), round(c.p_value, 5), [round(x, 4) for x in c.ci95], round(c.effect_size, 2)
    (0.05, 0.00036, [0.0376, 0.0624], 5.0)
    """
    from scipy import stats

    diffs = np.asarray(method, float) - np.asarray(reference, float)
    n = len(diffs)
    delta = float(diffs.mean()) if n else math.nan
    sd = float(diffs.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or not sd > 0:
        return Comparison(n, delta, None, None, None)
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * sd / math.sqrt(n)
    return Comparison(n, delta, paired_test(method, reference), (delta - half, delta + half), delta / sd)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None entries are not tested and stay None).

    >>> holm([0.01, 0.04, None, 0.03])
    [0.03, 0.06, None, 0.06]
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_test(method: Sequence[float], baseline: Sequence[float]) -> float | None:
    """``scipy.stats.ttest_rel`` p-value, or None when it is undefined (fewer than two pairs, or every
    difference equal so the variance is zero)."""
    from scipy import stats

    if len(method) < 2:
        return None
    with np.errstate(all="ignore"):
        p = float(stats.ttest_rel(np.asarray(method, float), np.asarray(baseline, float)).pvalue)
    return None if math.isnan(p) else p


def statistics(compare_to: str, correction: str) -> dict[str, Any]:
    """How the verdicts were computed (results.json ``statistics``)."""
    return {
        "test": "paired t-test over seeds (scipy.stats.ttest_rel)",
        "alpha": ALPHA,
        "compare_to": compare_to,
        "correction": correction,
        "confidence_interval": f"{CONFIDENCE:.0%} t interval of the mean paired difference",
        "effect_size": EFFECT_SIZE,
    }


@dataclass
class _Cell:
    dataset: str
    first: RunRecord
    by_seed: dict[int, float]
    per_class: dict[str, float | None]

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.by_seed.values())))


def references(cells: Sequence[_Cell], compare_to: str) -> dict[str, str]:
    """variant → the variant it is compared to, within one column. ``best``: the highest mean (first on ties)
    against everything else, itself against the runner-up. References and the reference row are not tested."""
    ranked = [c for c in cells if not c.first.reference]
    if compare_to == BEST:
        order = sorted(ranked, key=lambda c: -c.mean)  # stable: the first of equal means wins
        if len(order) < 2:
            return {}
        best = order[0].first.variant
        return {c.first.variant: best for c in order[1:]} | {best: order[1].first.variant}
    target = next((c.first.variant for c in ranked if _names(c.first, compare_to)), None)
    if target is None:
        return {}
    return {c.first.variant: target for c in ranked if c.first.variant != target}


def _names(record: RunRecord, name: str) -> bool:
    return name in (record.variant, record.method)


def summarize(records: Sequence[RunRecord], compare_to: str = BASELINE, correction: str = "none") -> list[Summary]:
    """Summaries per (dataset, variant), then the "Avg" summaries, in the order variants first appear; every
    row compared to ``compare_to`` (``baseline``, ``best`` or a method) with p-values corrected per column."""
    if correction not in CORRECTIONS:
        raise SgidError(f"unknown --correction {correction!r}; choose from: {', '.join(CORRECTIONS)}")
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.dataset, record.variant)].append(record)
    datasets = list(dict.fromkeys(r.dataset for r in records))
    order = list(dict.fromkeys(r.variant for r in sorted(records, key=lambda r: r.variant != BASELINE)))
    accuracy = {key: {r.seed: r.accuracy for r in group} for key, group in groups.items()}
    columns: list[list[_Cell]] = [
        [
            _Cell(dataset, groups[(dataset, v)][0], accuracy[(dataset, v)], _mean_per_class(groups[(dataset, v)]))
            for v in order
            if groups.get((dataset, v))
        ]
        for dataset in datasets
    ]
    columns.append(_averages(groups, accuracy, datasets, order))
    return [summary for column in columns for summary in _column(column, compare_to, correction)]


def _column(cells: list[_Cell], compare_to: str, correction: str) -> list[Summary]:
    refs = references(cells, compare_to)
    by_variant = {c.first.variant: c for c in cells}
    comparisons: dict[str, Comparison] = {}
    for cell in cells:
        target = refs.get(cell.first.variant)
        if target is None:
            continue
        other = by_variant[target].by_seed
        paired = sorted(s for s in cell.by_seed if s in other)
        if paired:
            comparisons[cell.first.variant] = compare([cell.by_seed[s] for s in paired], [other[s] for s in paired])
    tested = list(comparisons)
    adjusted = dict(zip(tested, holm([comparisons[v].p_value for v in tested]), strict=True))
    out = []
    for cell in cells:
        variant = cell.first.variant
        comparison = comparisons.get(variant)
        p_adjusted = adjusted.get(variant) if correction == "holm" else None
        decisive = p_adjusted if correction == "holm" else comparison.p_value if comparison else None
        values = tuple(cell.by_seed[s] for s in sorted(cell.by_seed))
        out.append(
            Summary(
                dataset=cell.dataset,
                variant=variant,
                label=cell.first.label,
                method=cell.first.method,
                mix=cell.first.mix,
                proportion=cell.first.proportion,
                seeds=tuple(sorted(cell.by_seed)),
                accuracies=values,
                mean=float(np.mean(values)),
                std=float(np.std(values, ddof=1)) if len(values) > 1 else None,
                p_value=comparison.p_value if comparison else None,
                delta=comparison.delta if comparison else None,
                significant=decisive is not None and decisive < ALPHA,
                per_class=cell.per_class,
                reference=cell.first.reference,
                compared_to=refs.get(variant) if comparison else None,
                ci95=comparison.ci95 if comparison else None,
                effect_size=comparison.effect_size if comparison else None,
                p_adjusted=p_adjusted,
                pairs=comparison.pairs if comparison else 0,
            )
        )
    return out


def _mean_per_class(records: Sequence[RunRecord]) -> dict[str, float | None]:
    names = list(records[0].per_class)
    out: dict[str, float | None] = {}
    for name in names:
        values = [r.per_class.get(name) for r in records]
        present = [v for v in values if v is not None]
        out[name] = float(np.mean(present)) if present else None
    return out


def _averages(
    groups: dict[tuple[str, str], list[RunRecord]],
    accuracy: dict[tuple[str, str], dict[int, float]],
    datasets: list[str],
    order: list[str],
) -> list[_Cell]:
    cells = []
    for variant in order:
        if not all((d, variant) in accuracy for d in datasets):
            continue
        common = set.intersection(*(set(accuracy[(d, variant)]) for d in datasets))
        by_seed = {s: float(np.mean([accuracy[(d, variant)][s] for d in datasets])) for s in common}
        if by_seed:
            cells.append(_Cell(AVG, groups[(datasets[0], variant)][0], by_seed, {}))
    return cells
