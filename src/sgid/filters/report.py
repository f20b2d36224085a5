"""The per-class report of a filter run: kept and rejected counts per class and per filter (report.json and
report.md)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sgid.filters.base import FilterResult
from sgid.filters.chain import ChainResult
from sgid.markdown import quoted, table


def build_report(chain: ChainResult, *, settings: dict[str, Any], originals: dict[str, int]) -> dict[str, Any]:
    """Counts overall, per filter and per class. ``originals``: real-image rows passed through, per class."""
    labels = np.array([e.label for e in chain.data.generated], dtype=object)
    classes = sorted(set(chain.data.classes) | set(originals))
    return {
        "settings": settings,
        "composition": "sequential: each filter decides only about the images every earlier filter kept, and "
        "computes its statistics over them",
        "totals": _counts(chain, np.ones(len(labels), dtype=bool)) | {"originals": sum(originals.values())},
        "filters": [
            {
                "filter": r.name,
                "judged": int(r.judged.sum()),
                "rejected": int(r.verdict.reject.sum()),
                **_unscored(r),
                **r.scores.summary,
                **r.verdict.summary,
            }
            for r in chain.results
        ],
        "per_class": {
            label: _counts(chain, labels == label) | {"originals": originals.get(label, 0)} for label in classes
        },
    }


def _unscored(result: FilterResult) -> dict[str, Any]:
    unscored = int((result.judged & ~np.isfinite(result.scores.values)).sum())
    return {"unscored": unscored, "unscored_because": result.scores.missing} if unscored else {"unscored": 0}


def _counts(chain: ChainResult, rows: np.ndarray) -> dict[str, Any]:
    return {
        "generated": int(rows.sum()),
        "kept": int((chain.kept & rows).sum()),
        "rejected": int((~chain.kept & rows).sum()),
        "rejected_by": {r.name: int((r.verdict.reject & rows).sum()) for r in chain.results},
    }


def report_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    names = [f["filter"] for f in report["filters"]]
    totals = report["totals"]
    lines = [
        f"# Filter report: {settings['run_dir']}",
        "",
        f"Filters, in order: {', '.join(f'`{n}`' for n in names) or 'none'}. {report['composition'].capitalize()}.",
        "",
        f"Kept **{totals['kept']}** of {totals['generated']} generated images "
        f"({_percent(totals['kept'], totals['generated'])}); "
        f"{totals['originals']} real images passed through.",
        "",
    ]
    lines += quoted(settings.get("tiny"))
    header = ["class", "generated", *[f"rejected by {n}" for n in names], "kept", "kept %"]
    rows = [*report["per_class"].items(), ("**all**", totals)]
    lines += table(
        header,
        (
            [
                label,
                c["generated"],
                *[c["rejected_by"][n] for n in names],
                c["kept"],
                _percent(c["kept"], c["generated"]),
            ]
            for label, c in rows
        ),
    )
    lines += ["", "## Filters", ""]
    for entry in report["filters"]:
        details = {k: v for k, v in entry.items() if k not in ("filter", "judged", "rejected")}
        lines.append(
            f"- `{entry['filter']}`: judged {entry['judged']}, rejected {entry['rejected']}"
            + "".join(f"; {k}: {_short(v)}" for k, v in details.items())
        )
    empty = [label for label, counts in report["per_class"].items() if counts["kept"] == 0 and counts["originals"] == 0]
    if empty:
        lines += [
            "",
            f"Warning: no image of {', '.join(empty)} is left; the filtered folder has no such class "
            "folder, so class indices of an ImageFolder over it differ from the full dataset's.",
        ]
    return "\n".join(lines) + "\n"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    return str(value)
