"""What the review app shows: the images of one or more runs, grouped by the original they augment.

Runs are read with the same reader as every other command (:func:`sgid.rundir.read_run_dir`, over
:func:`sgid.manifest.read_run`), once, when the
app starts; pages then filter, sort and slice this in-memory index (no disk access per page but the thumbnails
the page shows, which are cached). Images are addressed by their number in the index, never by a path from the
request, and only files inside their run folder (images) or the run's input folder (originals) are served: a
listed file that resolves elsewhere (a symlink out) is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgid.errors import SgidError
from sgid.manifest import json_number
from sgid.rundir import RunDir, read_run_dir


@dataclass(frozen=True)
class Run:
    index: int
    path: Path
    identity: str  # run.json identity_sha256, else the resolved folder path
    name: str  # what the page calls it: the folder name, made unique
    method: str  # the run's method (run.json config.method, else its rows')
    source_dir: Path | None
    info: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Item:
    """One generated image."""

    id: int
    run: Run
    file_name: str
    path: Path
    label: str
    label_text: str
    method: str
    source: str | None
    source_sha256: str | None
    k: int | None
    seed: int | None
    caption: str | None
    prompt: str | None
    similarity: float | None
    guidance: float | None
    noise: float | None
    details: tuple[tuple[str, str], ...]  # further method-specific fields worth showing (partner, query, ...)
    filter_decision: str | None = None  # from --filters DIR: keep | reject
    filter_reason: str | None = None


@dataclass(frozen=True)
class Original:
    id: int
    source: str
    label: str
    label_text: str
    path: Path | None  # None when the run's input folder is unknown or gone
    root: Path | None  # the folder it must stay inside


@dataclass(frozen=True)
class Group:
    """An original and every augmentation of it, from every run."""

    original: Original
    items: tuple[Item, ...]


def _float(value: Any) -> float | None:
    return float(value) if json_number(value) else None


#: Manifest fields shown under "details" when present (method-specific provenance).
DETAIL_FIELDS = (
    "caption_source",
    "sentence_source",
    "instruction",
    "query",
    "score",
    "pool_path",
    "perturbation_params",
    "partner",
    "partner_label",
    "parent",
    "concept_token",
)


class Catalog:
    """Every image of the given runs, indexed for the gallery and the study."""

    def __init__(self, runs: Sequence[RunDir], filters: Mapping[int, Mapping[str, tuple[str, str]]] | None = None):
        if not runs:
            raise SgidError("give at least one run folder to review")
        self.runs: list[Run] = []
        names: dict[str, int] = {}
        seen: dict[str, Path] = {}
        for index, run_dir in enumerate(runs):
            identity = run_dir.identity
            if identity in seen:
                raise SgidError(f"{run_dir.path} and {seen[identity]} are the same run; give each run once")
            seen[identity] = run_dir.path
            name = run_dir.path.resolve().name or str(run_dir.path)
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                name = f"{name} ({names[name]})"
            config = run_dir.info.get("config")
            method = config.get("method") if isinstance(config, dict) else None
            if not isinstance(method, str):
                methods = sorted({e.method for e in run_dir.generated}) or ["original"]
                method = "+".join(methods)
            self.runs.append(Run(index, run_dir.path, identity, name, method, run_dir.source_dir, run_dir.info))
        self.items: list[Item] = []
        originals: dict[str, tuple[str, str, Path | None, Path | None]] = {}  # key -> label, text, path, root
        for run_dir, run in zip(runs, self.runs, strict=True):
            decisions = (filters or {}).get(run.index, {})
            for entry in run_dir.generated:
                row = entry.row
                decision = decisions.get(entry.file_name)
                self.items.append(
                    Item(
                        id=len(self.items),
                        run=run,
                        file_name=entry.file_name,
                        path=entry.path,
                        label=entry.label,
                        label_text=entry.label_text,
                        method=entry.method,
                        source=entry.source,
                        source_sha256=entry.source_sha256,
                        k=entry.k,
                        seed=row.get("seed") if isinstance(row.get("seed"), int) else None,
                        caption=row.get("caption") if isinstance(row.get("caption"), str) else None,
                        prompt=entry.prompt,
                        similarity=_float(row.get("similarity")),
                        guidance=_float(row.get("guidance_scale")),
                        noise=_float(row.get("noise_rate")),
                        details=tuple(
                            (name, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
                            for name in DETAIL_FIELDS
                            if (v := row.get(name)) is not None
                        ),
                        filter_decision=decision[0] if decision else None,
                        filter_reason=decision[1] if decision else None,
                    )
                )
                path = entry.source_path if entry.source is not None else None
                originals.setdefault(
                    self._group_key(self.items[-1]), (entry.label, entry.label_text, path, run.source_dir)
                )
        self._check_same_sources()
        self.originals = [Original(i, key, *originals[key]) for i, key in enumerate(sorted(originals))]
        self.original_by_source = {o.source: o for o in self.originals}
        by_source: dict[str, list[Item]] = {}
        for item in self.items:
            by_source.setdefault(self._group_key(item), []).append(item)
        self.groups = [
            Group(o, tuple(sorted(by_source[o.source], key=lambda i: (i.run.index, i.k or 0, i.file_name))))
            for o in self.originals
        ]
        self.item_by_key = {(item.run.identity, item.file_name): item for item in self.items}
        self.run_by_identity = {run.identity: run for run in self.runs}

    def _check_same_sources(self) -> None:
        """Runs grouped by original must agree on what each source is: one path made from two different images
        (runs of different inputs) would show one input's augmentations beside the other's original."""
        seen: dict[str, tuple[str, Run]] = {}
        for item in self.items:
            if item.source is None or item.source_sha256 is None:
                continue
            first = seen.setdefault(item.source, (item.source_sha256, item.run))
            if first[0] != item.source_sha256:
                raise SgidError(
                    f"the runs are not of the same input: {first[1].name} and {item.run.name} were made from "
                    f"different images at {item.source} (source_sha256 differs); review them separately"
                )

    @classmethod
    def open(
        cls, paths: Sequence[str | Path], filters: Sequence[str | Path] = (), source_dir: str | Path | None = None
    ) -> Catalog:
        runs = [read_run_dir(path, source_dir=source_dir) for path in paths]
        return cls(runs, read_filter_outputs(filters, runs))

    @staticmethod
    def _group_key(item: Item) -> str:
        """Augmentations of one real image group together across runs; images without a source stand alone."""
        return item.source or f"{item.run.name}/{item.file_name}"

    # -- lookups -------------------------------------------------------------------------------------------
    @property
    def labels(self) -> dict[str, str]:
        return dict(sorted({i.label: i.label_text for i in self.items}.items()))

    @property
    def methods(self) -> list[str]:
        return sorted({i.method for i in self.items})

    def item(self, run: str, file_name: str) -> Item:
        found = self.item_by_key.get((run, file_name))
        if found is None:
            raise KeyError(file_name)
        return found


def servable(path: Path | None, root: Path | None) -> Path | None:
    """``path`` when it is a file that resolves inside ``root`` (no symlink leads out); else None."""
    if path is None or root is None:
        return None
    real, base = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base or not os.path.isfile(real):
        return None
    return Path(real)


def read_filter_outputs(folders: Iterable[str | Path], runs: Sequence[RunDir]) -> dict[int, dict[str, tuple[str, str]]]:
    """``--filters DIR``: each a ``sgid filter`` output; its decisions (decision, reason) per file of its run."""
    from sgid.filters.output import DECISIONS, is_filter_output
    from sgid.manifest import RUN_FILE, json_lines, read_run_info

    found: dict[int, dict[str, tuple[str, str]]] = {}
    resolved = {run.path.resolve(): index for index, run in enumerate(runs)}
    for folder in map(Path, folders):
        if not is_filter_output(folder):
            raise SgidError(f"--filters {folder} is not an sgid filter output (no decisions.jsonl and report.json)")
        origin_name = read_run_info(folder / RUN_FILE).get("filtered_from")
        if not isinstance(origin_name, str) or not origin_name:
            raise SgidError(f"--filters {folder}: its run.json does not say which run it filtered")
        origin = Path(origin_name).resolve()
        if origin not in resolved:
            raise SgidError(f"--filters {folder} filtered {origin}, which is not one of the runs given")
        decisions = found.setdefault(resolved[origin], {})
        for number, row in json_lines(folder / DECISIONS):  # one-line errors for what is not JSON
            try:
                decisions[str(row["file_name"])] = (str(row["decision"]), str(row.get("reason") or ""))
            except (KeyError, TypeError, AttributeError):
                raise SgidError(f"--filters {folder}/{DECISIONS}, line {number}: not a decision row") from None
    return found
