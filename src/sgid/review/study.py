"""The paper's human rating study (SGID table 2), blinded, and its export.

Protocol (paper §4.4, "Human Evaluation"): for a dataset, L labels are chosen at random and M of their original
images (10 × 10 in the paper); each original is shown with one augmentation per method; annotators rate each
augmentation from 1 to 5 for **semantic consistency** and for **diversity** with respect to the original. Here:

* the runs given are the methods, one run each, all of the same input (checked: the same source images);
* the sample is seeded (``--seed``): labels among those with originals augmented by every run, then originals
  within each label, then one augmentation per run and original (the k is picked by a per-item seed when a run
  made several), then the order of the methods per item (shuffled, so position says nothing about the method),
  then the order of the items;
* the page shows only positions (A, B, …): method names, run names and file names never reach the browser, and
  images are served under item and position numbers;
* the sample is stored in the review database when the study is first opened, so every annotator and every
  later session sees the same items; each rating is stored with annotator, time, item, position and the hidden
  method.

The export (``sgid review --export FILE``) writes every rating (CSV and JSON) and a report: per-method mean ± std
of each scale in the layout of table 2, and the inter-annotator agreement, Krippendorff's α (ordinal, the
maintained ``krippendorff`` package) over the rated images as units.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgid.errors import SgidError, require
from sgid.review.catalog import Catalog, Item
from sgid.review.db import SCALES, Rating, ReviewDB
from sgid.seeding import derive_seed

#: Shown on every study page (paper §1, §4.4: "preserve the essential semantics of the original image";
#: "bring explicit changes in the background, position, etc.").
DEFINITIONS = {
    "consistency": (
        "Semantic consistency: does the augmented image keep the essential semantics of the original, so that it "
        "still shows the same label as the original does (the object or texture and its defining parts)? "
        "1 = the label is lost or changed, 3 = recognisable but with wrong or missing essential parts, "
        "5 = fully preserved."
    ),
    "diversity": (
        "Diversity: how much does the augmented image differ from the original (background, position, pose, "
        "viewpoint, colour, style)? 1 = almost the same image, 3 = clear changes of a few aspects, "
        "5 = a very different image."
    ),
}
SCALE_TITLES = {"consistency": "Con.", "diversity": "Div."}
POSITIONS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class StudySettings:
    labels: int = 10
    originals: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.labels < 1:
            raise SgidError(f"--labels {self.labels}: choose at least 1 label")
        if self.originals < 1:
            raise SgidError(f"--originals {self.originals}: choose at least 1 original per label")


@dataclass(frozen=True)
class Study:
    id: str
    settings: dict[str, Any]  # labels, originals, seed, runs (identity, path, method), dataset
    methods: list[str]  # one per run, in the order the runs were given
    notes: list[str]  # what the sample could not do as asked (fewer labels or originals)


def method_names(catalog: Catalog) -> list[str]:
    """One name per run: its method, or method (run folder) where two runs share a method."""
    methods = [run.method for run in catalog.runs]
    return [m if methods.count(m) == 1 else f"{m} ({run.name})" for m, run in zip(methods, catalog.runs, strict=True)]


def open_study(catalog: Catalog, db: ReviewDB, settings: StudySettings, *, create: bool = True) -> Study:
    """The study over the catalog's runs with these settings: made (and stored) on first use, then read back."""
    runs = catalog.runs
    methods = method_names(catalog)
    dataset = _dataset_name(catalog)
    identity = {
        "runs": sorted(run.identity for run in runs),
        "labels": settings.labels,
        "originals": settings.originals,
        "seed": settings.seed,
    }
    study_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    stored = db.study_settings(study_id)
    if stored is not None:
        return Study(study_id, stored, [r["method"] for r in stored["runs"]], [])
    if not create:
        raise SgidError(
            f"{db.path} holds no study over these runs with --labels {settings.labels} --originals "
            f"{settings.originals} --seed {settings.seed}; open one with sgid review --study"
        )
    items, notes = sample(catalog, settings)
    stored_settings = {
        **identity,
        "runs": [
            {"identity": run.identity, "path": str(run.path), "method": method}
            for run, method in zip(runs, methods, strict=True)
        ],
        "dataset": dataset,
        "items": len(items),
    }
    db.create_study(
        study_id,
        stored_settings,
        [
            (label, source, [(methods[item.run.index], item.run.identity, item.file_name) for item in images])
            for label, source, images in items
        ],
    )
    return Study(study_id, stored_settings, methods, notes)


def sample(catalog: Catalog, settings: StudySettings) -> tuple[list[tuple[str, str, list[Item]]], list[str]]:
    """The seeded sample: (label, source, one image per run in shown order) per item, in shown order."""
    runs = catalog.runs
    per_run: list[dict[str, list[Item]]] = [{} for _ in runs]
    for item in catalog.items:
        if item.source is not None:
            per_run[item.run.index].setdefault(item.source, []).append(item)
    common = set(per_run[0]).intersection(*per_run[1:])
    for source in sorted(common):
        if len({i.source_sha256 for r in range(len(runs)) for i in per_run[r][source] if i.source_sha256}) > 1:
            raise SgidError(f"the runs are not of the same input: {source} differs between them (source_sha256)")
    if not common:
        raise SgidError("the runs share no original: a study compares methods on the same input images")
    labels: dict[str, list[str]] = {}
    for source in sorted(common):
        labels.setdefault(per_run[0][source][0].label, []).append(source)
    rng = random.Random(derive_seed(settings.seed, "study"))
    chosen_labels = sorted(rng.sample(sorted(labels), min(settings.labels, len(labels))))
    notes = []
    if len(chosen_labels) < settings.labels:
        notes.append(f"only {len(labels)} labels have originals augmented by every run (asked for {settings.labels})")
    items: list[tuple[str, str, list[Item]]] = []
    for label in chosen_labels:
        sources = sorted(rng.sample(labels[label], min(settings.originals, len(labels[label]))))
        if len(sources) < settings.originals:
            notes.append(f"label {label} has {len(sources)} originals augmented by every run")
        for source in sources:
            images = []
            for r in range(len(runs)):
                options = sorted(per_run[r][source], key=lambda i: (i.k if i.k is not None else -1, i.file_name))
                pick = random.Random(derive_seed(settings.seed, source, runs[r].identity, "pick"))
                images.append(options[pick.randrange(len(options))])
            random.Random(derive_seed(settings.seed, source, "order")).shuffle(images)
            items.append((label, source, images))
    rng.shuffle(items)
    return items, notes


def _dataset_name(catalog: Catalog) -> str:
    folders = {run.source_dir.resolve().name for run in catalog.runs if run.source_dir is not None}
    return folders.pop() if len(folders) == 1 else "dataset"


# -- export ---------------------------------------------------------------------------------------------------
CSV_FIELDS = (
    "annotator",
    "item",
    "position",
    "method",
    "label",
    "source",
    "run",
    "file_name",
    "scale",
    "value",
    "time",
)


def rating_rows(db: ReviewDB, study: Study) -> list[dict[str, Any]]:
    items = {number: (label, source) for number, label, source in db.study_items(study.id)}
    files: dict[tuple[int, int], tuple[str, str]] = {}
    for number in items:
        for position, _method, run, file_name in db.study_images(study.id, number):
            files[(number, position)] = (run, file_name)
    runs = {r["identity"]: r["path"] for r in study.settings["runs"]}
    rows = []
    for r in db.ratings(study.id):
        run, file_name = files[(r.item, r.position)]
        rows.append(
            {
                "annotator": r.annotator,
                "item": r.item,
                "position": POSITIONS[r.position] if r.position < len(POSITIONS) else str(r.position),
                "method": r.method,
                "label": items[r.item][0],
                "source": items[r.item][1],
                "run": runs.get(run, run),
                "file_name": file_name,
                "scale": r.scale,
                "value": r.value,
                "time": r.time,
            }
        )
    return rows


def krippendorff_alpha(ratings: Sequence[Rating], scale: str) -> float | None:
    """Krippendorff's α (ordinal) of one scale: annotators × rated images (item, position); None when it is
    undefined (fewer than two annotators rating a common image, or a single value in all the data)."""
    krippendorff = require("krippendorff", "review")
    import numpy as np

    chosen = [r for r in ratings if r.scale == scale]
    annotators = sorted({r.annotator for r in chosen})
    units = sorted({(r.item, r.position) for r in chosen})
    if len(annotators) < 2 or not units:
        return None
    data = np.full((len(annotators), len(units)), np.nan)
    a_index = {a: i for i, a in enumerate(annotators)}
    u_index = {u: i for i, u in enumerate(units)}
    for r in chosen:
        data[a_index[r.annotator], u_index[(r.item, r.position)]] = r.value
    if not ((~np.isnan(data)).sum(axis=0) >= 2).any() or len(set(data[~np.isnan(data)].tolist())) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def report(db: ReviewDB, study: Study) -> dict[str, Any]:
    ratings = db.ratings(study.id)
    per_method: dict[str, dict[str, Any]] = {}
    for method in study.methods:
        per_method[method] = {}
        for scale in SCALES:
            values = [r.value for r in ratings if r.method == method and r.scale == scale]
            per_method[method][scale] = {
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "n": len(values),
            }
    annotators = sorted({r.annotator for r in ratings})
    return {
        "study": study.id,
        "dataset": study.settings.get("dataset"),
        "items": study.settings.get("items"),
        "labels": study.settings["labels"],
        "originals": study.settings["originals"],
        "seed": study.settings["seed"],
        "annotators": {a: sum(r.annotator == a for r in ratings) for a in annotators},
        "ratings": len(ratings),
        "methods": per_method,
        "alpha": {scale: krippendorff_alpha(ratings, scale) for scale in SCALES},
        "definitions": DEFINITIONS,
    }


def _cell(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "–"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if stats["std"] is not None else f"{stats['mean']:.2f}"


def report_markdown(data: dict[str, Any]) -> str:
    dataset = data["dataset"]
    lines = [
        f"# Human evaluation: {dataset}",
        "",
        f"{data['items']} items ({data['labels']} labels × {data['originals']} originals asked, seed {data['seed']}), "
        f"each original shown with one augmentation per method, methods blinded and shuffled per item; "
        f"{data['ratings']} ratings by {len(data['annotators'])} annotator(s).",
        "",
        "Per-method mean ± standard deviation (sample std over all ratings) on the 1–5 scales, in the layout of "
        "the SGID paper's table 2:",
        "",
        f"| Method | {dataset} Con. | {dataset} Div. |",
        "| --- | --- | --- |",
    ]
    for method, scales in data["methods"].items():
        lines.append(f"| {method} | {_cell(scales['consistency'])} | {_cell(scales['diversity'])} |")
    alpha = data["alpha"]

    def show(value: float | None) -> str:
        return (
            "n/a (needs two annotators rating the same images, and more than one value)"
            if value is None
            else f"{value:.3f}"
        )

    lines += [
        "",
        "Inter-annotator agreement, Krippendorff's α (ordinal; units: the rated images):",
        "",
        f"- semantic consistency: {show(alpha['consistency'])}",
        f"- diversity: {show(alpha['diversity'])}",
        "",
        "Ratings per annotator: " + (", ".join(f"{a} {n}" for a, n in data["annotators"].items()) or "none"),
        "",
        "Scales as shown to the annotators:",
        "",
        *(f"- {text}" for text in data["definitions"].values()),
        "",
    ]
    return "\n".join(lines)


def _is_export(csv_path: Path, json_path: Path, md_path: Path) -> bool:
    """Whether the files at an --export name are all an earlier export's (each absent or in its format)."""
    try:
        if csv_path.exists() and csv_path.read_text(encoding="utf-8").split("\n", 1)[0] != ",".join(CSV_FIELDS):
            return False
        if json_path.exists():
            payload = json.loads(json_path.read_text(encoding="utf-8"))
            if not isinstance(payload, dict) or set(payload) != {"study", "report", "ratings"}:
                return False
        return not md_path.exists() or md_path.read_text(encoding="utf-8").startswith("# Human evaluation: ")
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def export(db: ReviewDB, study: Study, target: str | Path) -> list[Path]:
    """Write FILE.csv, FILE.json (ratings + report) and FILE.md (the report); FILE may end in .csv/.json/.md."""
    from sgid.runstore import atomic_write

    target = Path(target)
    stem = target.with_suffix("") if target.suffix.lower() in (".csv", ".json", ".md") else target
    if stem.parent and not stem.parent.is_dir():
        raise SgidError(f"--export {target}: folder {stem.parent} does not exist")
    paths = [stem.with_name(stem.name + ext) for ext in (".csv", ".json", ".md")]
    if any(path.exists() for path in paths) and not _is_export(*paths):
        taken = ", ".join(str(path) for path in paths if path.exists())
        raise SgidError(
            f"--export {target}: {taken} exists and is not an earlier export of a study; choose another name "
            f"(sgid never overwrites other files)"
        )
    rows = rating_rows(db, study)
    data = report(db, study)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(paths[0], buffer.getvalue().encode("utf-8"))
    payload = {"study": study.settings, "report": data, "ratings": rows}
    atomic_write(paths[1], (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    atomic_write(paths[2], report_markdown(data).encode("utf-8"))
    return paths
