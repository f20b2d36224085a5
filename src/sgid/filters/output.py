"""The output folder of ``sgid filter``: the kept images as a dataset, plus every decision and the report.

Layout of OUT::

    metadata.jsonl      the kept rows of RUN_DIR/metadata.jsonl (real-image "original" rows always kept)
    <class>/<name>.png  the kept images, hard-linked to RUN_DIR's where possible
    decisions.jsonl     per generated image: file_name, each filter's score and decision, decision, reason
    report.json         counts per class and per filter, thresholds, settings
    report.md           the same as tables
    run.json            RUN_DIR's run.json plus a "filter" section, so OUT is itself a run folder

OUT loads with ``datasets.load_dataset("imagefolder", data_dir=OUT)`` and torchvision's ``ImageFolder`` and is
a valid input of ``sgid evaluate --generated``, ``sgid metrics`` and another ``sgid filter``. It is built in
a hidden sibling folder and moved into place, so OUT is never half-written; a previous ``sgid filter`` output
in OUT is replaced, unless it also holds files the filter did not write (then the command refuses, naming them:
replacing the folder would delete them).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sgid.errors import SgidError
from sgid.manifest import MANIFEST, RUN_FILE, dumps
from sgid.outdir import check_out_dir as check_out
from sgid.rundir import RunDir
from sgid.runstore import atomic_write, copy_or_link

DECISIONS = "decisions.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def is_filter_output(folder: Path) -> bool:
    return (folder / DECISIONS).is_file() and (folder / REPORT_JSON).is_file()


def check_out_dir(out: Path, run: RunDir) -> None:
    """Refuse an OUT that would mix with, or replace, data that is not a previous filter output."""
    reads = [("the run folder", run.path), ("the real input folder", run.source_dir)]
    check_out(out, reads, command="filter", owned=is_filter_output)
    foreign = foreign_files(out) if out.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise SgidError(
            f"--out {out} holds an earlier sgid filter output and files it did not write ({shown}); replacing it "
            f"would delete them: move them out or choose another --out"
        )


def foreign_files(out: Path) -> list[str]:
    """The files in a previous filter output ``out`` that its own manifest and reports do not account for."""
    ours = {MANIFEST, DECISIONS, REPORT_JSON, REPORT_MD, RUN_FILE}
    manifest = out / MANIFEST
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                name = json.loads(line).get("file_name")
            except (ValueError, AttributeError):
                continue
            if isinstance(name, str):
                ours.add(Path(name).as_posix())
    return sorted(
        path.relative_to(out).as_posix()
        for path in out.rglob("*")
        if not path.is_dir() and path.relative_to(out).as_posix() not in ours
    )


def write_output(
    out: Path,
    run: RunDir,
    kept: Iterable[Any],
    decisions: list[dict[str, Any]],
    report: dict[str, Any],
    markdown: str,
) -> None:
    """Write everything into a staging folder next to OUT, then move it into place."""
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        rows = []
        for entry in kept:
            copy_or_link(entry.path, staging / entry.file_name)
            rows.append(entry.row.to_json())
        _write_lines(staging / MANIFEST, rows)
        _write_lines(staging / DECISIONS, decisions)
        atomic_write(staging / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
        atomic_write(staging / REPORT_MD, markdown.encode("utf-8"))
        info = {k: v for k, v in run.info.items() if k not in ("identity", "identity_sha256")}
        info.update(filtered_from=str(run.path.resolve()), filter=report["settings"])
        atomic_write(staging / RUN_FILE, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
        _replace(out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write(path, "".join(dumps(row) + "\n" for row in rows).encode("utf-8"))


def _replace(out: Path, staging: Path) -> None:
    """Move ``staging`` to ``out``; an existing (empty, or previous filter) ``out`` is removed afterwards."""
    previous = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, previous)
    os.rename(staging, out)
    shutil.rmtree(previous, ignore_errors=True)
