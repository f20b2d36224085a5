"""results.json, results.md (rows = methods, columns = datasets + Avg, like the paper's table 1) and plots.

Accuracies are stored as fractions and shown as percentages. A cell reads ``mean ± std`` over the seeds, followed
by ``*`` when the method beats the row it is compared to (``--compare-to``, the baseline by default; named in the
table's caption) with p < 0.05 (paired t-test over seeds, Holm-adjusted with ``--correction holm``), or ``†`` when
it is significantly worse (the paper marks only gains; a harness that reports honestly marks both). The second
table gives each difference in percentage points with its 95% confidence interval, Cohen's d_z and the p-value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgid.evaluate.generated import tiny_warning
from sgid.evaluate.methods import BASELINE
from sgid.evaluate.stats import ALPHA, AVG, BEST, RunRecord, Summary
from sgid.runstore import write_figure

MAX_CLASSES_IN_MARKDOWN = 20


def generated_provenance(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Every generated folder behind the rows, once per (dataset, name, folder), from the runs' records (the
    table is rebuilt from every run in OUT, so its provenance is too)."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for record in records:
        for run in record.details.get("generated_runs") or []:
            found.setdefault((record.dataset, run["name"], run["folder"]), {"dataset": record.dataset, **run})
    return list(found.values())


def results_json(
    protocol: dict[str, Any],
    records: Sequence[RunRecord],
    summary: Sequence[Summary],
    statistics: dict[str, Any] | None = None,
    skipped: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """results.json. ``skipped``: every image reading left out, as
    ``{"dataset", "folder", "image", "class", "reason"}``."""
    return {
        "protocol": protocol,
        "statistics": statistics or {},
        "generated": generated_provenance(records),
        "runs": [r.to_json() for r in records],
        "summary": [s.to_json() for s in summary],
        "skipped_images": list(skipped),
    }


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _cell(s: Summary | None) -> str:
    if s is None:
        return "–"
    if s.reference or s.std is None:
        return f"{_pct(s.mean)}{s.mark}"
    return f"{_pct(s.mean)} ± {_pct(s.std)}{s.mark}"


def _p_cell(s: Summary | None, compare_to: str = BASELINE) -> str:
    """``+1.23 [+0.40, +2.06], d_z 1.50 (p=0.012)*``: difference in points, 95% CI, effect size, p-value."""
    if s is None or s.delta is None:
        return "–"
    p = "p n/a" if s.p_value is None else f"p={s.p_value:.3g}"
    if s.p_adjusted is not None:
        p += f", Holm {s.p_adjusted:.3g}"
    ci = "" if s.ci95 is None else f" [{100 * s.ci95[0]:+.2f}, {100 * s.ci95[1]:+.2f}]"
    effect = "" if s.effect_size is None else f", d_z {s.effect_size:.2f}"
    versus = f" vs {s.compared_to}" if compare_to == BEST else ""
    return f"{100 * s.delta:+.2f}{ci}{effect} ({p}){s.mark}{versus}"


def comparison_caption(compare_to: str, correction: str) -> str:
    """What a mark means, for the table's caption."""
    if compare_to == BEST:
        against = "the best row of its column (the best row: than the runner-up)"
    elif compare_to == BASELINE:
        against = "the baseline"
    else:
        against = f"`{compare_to}`"
    test = "paired t-test over seeds, scipy.stats.ttest_rel"
    if correction == "holm":
        test += "; p-values Holm-adjusted over the rows of each column"
    return (
        f"`*`: better than {against} with p < {ALPHA:g}, `†`: worse with p < {ALPHA:g} ({test}). "
        f"Compared to: **{compare_to}**."
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _rows(summary: Sequence[Summary]) -> tuple[list[str], list[tuple[str, bool]], dict[tuple[str, str], Summary]]:
    datasets = list(dict.fromkeys(s.dataset for s in summary if s.dataset != AVG))
    variants = list(dict.fromkeys((s.variant, s.reference) for s in summary))
    variants.sort(key=lambda v: v[1])  # reference rows last
    cells = {(s.variant, s.dataset): s for s in summary}
    return datasets, variants, cells


def results_markdown(
    title: str,
    protocol: dict[str, Any],
    summary: Sequence[Summary],
    records: Sequence[RunRecord],
    compare_to: str = BASELINE,
    correction: str = "none",
) -> str:
    datasets, variants, cells = _rows(summary)
    labels = {s.variant: s.label + (" (reference)" if s.reference else "") for s in summary}
    seeds = sorted({r.seed for r in records if not r.reference})
    generated = generated_provenance(records)
    lines = [f"# {title}", ""]
    warning = tiny_warning(generated)
    if warning:
        lines += [f"> **Warning: {warning}**", ""]
    lines.append(
        f"Test accuracy (%), mean ± std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
        f"({', '.join(map(str, seeds))}); every method uses the same seeds, so runs pair up. "
        + comparison_caption(compare_to, correction)
    )
    lines.append("")
    header = ["Method", *datasets, "Avg."]
    lines += _table(header, [[labels[v], *(_cell(cells.get((v, d))) for d in [*datasets, AVG])] for v, _ in variants])
    against = {BASELINE: "the baseline", BEST: "the best method"}.get(compare_to, compare_to)
    lines += [
        "",
        f"## Difference to {against}",
        "",
        "Percentage points (mean of the paired differences over seeds) [95% confidence interval], Cohen's d_z "
        "(mean / standard deviation of the paired differences) and the paired t-test p-value"
        + (" (and its Holm adjustment)." if correction == "holm" else "."),
        "",
    ]
    compared = {v for (v, _), s in cells.items() if s.compared_to is not None}
    lines += _table(
        header,
        [
            [labels[v], *(_p_cell(cells.get((v, d)), compare_to) for d in [*datasets, AVG])]
            for v, ref in variants
            if v in compared and not ref
        ],
    )
    for dataset in datasets:
        rows = [cells[(v, dataset)] for v, _ in variants if (v, dataset) in cells]
        classes = list(rows[0].per_class) if rows else []
        if not classes:
            continue
        lines += ["", f"## Per-class accuracy: {dataset}", ""]
        if len(classes) > MAX_CLASSES_IN_MARKDOWN:
            lines.append(
                f"{len(classes)} classes: see results.json (summary → per_class) and plots/per_class_{dataset}.png."
            )
            continue
        lines += _table(
            ["Method", *classes], [[labels[s.variant], *(_pct(s.per_class.get(c), 1) for c in classes)] for s in rows]
        )
    lines += _generated_section(generated)
    lines += ["", "## Settings", ""]
    lines += [
        f"- {key}: {value}" for key, value in protocol.items() if key != "format" and value not in (None, {}, [], "")
    ]
    lines.append("")
    return "\n".join(lines)


def _generated_section(generated: Sequence[dict[str, Any]]) -> list[str]:
    """Where each generated method's images came from."""
    if not generated:
        return []
    lines = ["", "## Generated data", ""]
    rows = []
    for run in generated:
        models = ", ".join(f"{role}: {name}" for role, name in sorted((run.get("models") or {}).items())) or "–"
        if run.get("tiny"):
            models += " (**tiny random weights**)"
        identity = (run.get("identity") or "–")[:12]
        folder = run["folder"] + (f" (filtered from {run['filtered_from']})" if run.get("filtered_from") else "")
        method = (run.get("method") or "–") + (f" ({run['variant']})" if run.get("variant") else "")
        cells = [run["dataset"], f"`{run['name']}`", folder, method, identity, models]
        rows.append([cell.replace("|", "\\|") for cell in cells] + [str(run["images"])])
    lines += _table(["Dataset", "Method", "Folder", "Augment method", "Run identity", "Models", "Images"], rows)
    return lines


# -- plots ---------------------------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend (Agg canvas)

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure: Any, axes: Any, title: str, path: Path) -> Path:
    """Label the accuracy axis, title and legend, and write the figure to ``path``."""
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    axes.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_figure(figure, path)
    return path


def plot_per_class(summary: Sequence[Summary], dataset: str, path: Path) -> Path | None:
    rows = [s for s in summary if s.dataset == dataset and s.per_class]
    if not rows:
        return None
    classes = list(rows[0].per_class)
    figure = _figure(max(7.0, 0.35 * len(classes) * min(len(rows), 4)), 4.5)
    axes = figure.subplots()
    many = len(classes) > MAX_CLASSES_IN_MARKDOWN
    width = 0.8 / len(rows)
    for i, s in enumerate(rows):
        values = [100 * (s.per_class.get(c) or 0.0) for c in classes]
        if many:
            axes.plot(range(len(classes)), values, marker=".", linewidth=0.8, label=s.label)
        else:
            axes.bar([x + (i - (len(rows) - 1) / 2) * width for x in range(len(classes))], values, width, label=s.label)
    axes.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 10 else 0, fontsize=7)
    return _save(figure, axes, f"Per-class test accuracy, {dataset} (mean over seeds)", path)


def plot_proportion_sweep(summary: Sequence[Summary], dataset: str, path: Path) -> Path | None:
    """Accuracy against the proportion p for every method/mix swept over at least two values (004, fig. 3)."""
    sweeps: dict[tuple[str, str], list[Summary]] = defaultdict(list)
    for s in summary:
        if s.dataset == dataset and s.proportion is not None and s.mix is not None:
            sweeps[(s.method, s.mix)].append(s)
    sweeps = {k: sorted(v, key=lambda s: s.proportion or 0.0) for k, v in sweeps.items() if len(v) > 1}
    if not sweeps:
        return None
    figure = _figure()
    axes = figure.subplots()
    for (method, mix), rows in sweeps.items():
        axes.errorbar(
            [s.proportion for s in rows],
            [100 * s.mean for s in rows],
            yerr=[100 * (s.std or 0.0) for s in rows],
            marker="o",
            capsize=3,
            label=f"{method} [{mix}]",
        )
    baseline = next((s for s in summary if s.dataset == dataset and s.variant == "baseline"), None)
    if baseline is not None:
        axes.axhline(100 * baseline.mean, color="gray", linestyle="--", label="baseline (real only)")
        if baseline.std:
            axes.axhspan(
                100 * (baseline.mean - baseline.std), 100 * (baseline.mean + baseline.std), color="gray", alpha=0.15
            )
    axes.set_xlabel("proportion p of generated images")
    return _save(figure, axes, f"Accuracy vs p, {dataset} (mean ± std over seeds)", path)


def write_plots(summary: Sequence[Summary], out: Path) -> list[Path]:
    datasets = list(dict.fromkeys(s.dataset for s in summary if s.dataset != AVG))
    written: list[Path | None] = []
    for dataset in datasets:
        written.append(plot_per_class(summary, dataset, out / "plots" / f"per_class_{dataset}.png"))
        written.append(plot_proportion_sweep(summary, dataset, out / "plots" / f"accuracy_vs_p_{dataset}.png"))
    return [p for p in written if p is not None]
