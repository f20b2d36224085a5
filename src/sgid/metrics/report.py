"""metrics.md and the per-class bar plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from sgid.errors import require
from sgid.markdown import quoted, table
from sgid.runstore import write_figure

#: (key in the metrics, plot title, y-axis label)
PLOTS = (
    (
        "similarity",
        "Mean cosine similarity between originals and their augmentations (paper fig. 3)",
        "CLIP cosine similarity",
    ),
    ("diversity", "Mean pairwise distance among augmentations of one original", "CLIP cosine distance"),
    ("clip_score", "CLIP score between generated images and their prompts", "CLIP score"),
    ("fid", "FID between real and generated images (lower is closer)", "FID"),
    ("kid", "KID between real and generated images (lower is closer)", "KID"),
)


def value(metrics: dict[str, Any], key: str) -> float | None:
    """The headline number of one metric (a summary's or KID's mean, or FID itself)."""
    entry = metrics.get(key)
    if isinstance(entry, dict):
        return entry.get("mean")
    return entry


def metrics_markdown(report: dict[str, Any], plots: list[str]) -> str:
    features = report["features"]
    lines = [
        f"# Augmentation metrics: {report['run_dir']}",
        "",
        f"Generated images compared with the real images in {report['reference']}. FID and KID use "
        f"`{features['name']}` features ({features['identity']}, {features['dim']}-d); similarity, diversity "
        f"and CLIP score use CLIP ({report['scorer']}).",
        "",
    ]
    lines += quoted(report.get("tiny"))
    header = ["class", "generated", "reference", "similarity", "diversity", "CLIP score", "FID", "KID"]
    rows = [*report["per_class"].items(), ("**all**", report["overall"])]
    lines += table(header, (_cells(label, metrics) for label, metrics in rows))
    lines += ["", "## Definitions", ""]
    lines += [f"- **{name}**: {text}" for name, text in report["definitions"].items()]
    notes = [(label, note) for label, metrics in rows for note in metrics.get("notes", [])]
    if report.get("reference_skipped"):
        notes.append(("reference", f"{len(report['reference_skipped'])} unreadable reference image(s) skipped"))
    if notes:
        lines += ["", "## Notes", ""] + [f"- {label}: {note}" for label, note in notes]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_plots(report: dict[str, Any], folder: Path) -> list[str]:
    """One bar plot per metric (classes on the x axis, the overall value dashed); returns relative paths."""
    matplotlib = require("matplotlib", "metrics")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"text.parse_math": False}):  # class names as written: "$5" is not maths notation
        return _write_plots(report, folder, plt)


def _write_plots(report: dict[str, Any], folder: Path, plt: Any) -> list[str]:
    written = []
    for key, title, ylabel in PLOTS:
        values = {label: value(m, key) for label, m in report["per_class"].items()}
        bars = {label: v for label, v in values.items() if v is not None}
        if not bars:
            continue
        width = max(6.0, 0.45 * len(bars) + 2.0)
        fig, ax = plt.subplots(figsize=(width, 4.0))
        ax.bar(list(bars), list(bars.values()), color="#4C72B0")
        overall = value(report["overall"], key)
        if overall is not None:
            ax.axhline(overall, color="#DD8452", linestyle="--", label=f"all: {overall:.4g}")
            ax.legend(loc="best", fontsize=8)
        ax.set_title(textwrap.fill(title, int(width * 11)), fontsize=9)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=60 if len(bars) > 6 else 0, labelsize=8)
        fig.tight_layout()
        path = folder / f"{key}.png"
        write_figure(fig, path)
        plt.close(fig)
        written.append(f"{folder.name}/{path.name}")
    return written


def _fmt(number: float | None, digits: int = 4) -> str:
    return "-" if number is None else f"{number:.{digits}f}"


def _cells(label: str, metrics: dict[str, Any]) -> list[Any]:
    """One row of the metrics table."""
    kid = metrics.get("kid")
    return [
        label,
        metrics["generated"],
        metrics["reference"],
        _fmt(value(metrics, "similarity")),
        _fmt(value(metrics, "diversity")),
        _fmt(value(metrics, "clip_score"), 2),
        _fmt(metrics.get("fid"), 2),
        f"{kid['mean']:.4f} ± {kid['std']:.4f}" if kid else "-",
    ]
