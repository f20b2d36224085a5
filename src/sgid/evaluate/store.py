"""The output folder of ``sgid evaluate``: resumable, one file per finished run.

Layout of OUT::

    evaluation.json                          the protocol (backbone, recipe, subsets …) and package versions
    runs/<dataset>/<variant>/seed<k>.json    one finished run each, written atomically
    runs/<dataset>/<variant>/lr_search.json  validation accuracy per learning rate, when the lr is searched
    models/<dataset>/<variant>/seed<k>/      classifier.safetensors + classifier.json (--save-models)
    results.json, results.md, plots/         rebuilt from runs/ after every evaluation

A run counts as finished only when its JSON file exists (written to a temporary file, then renamed), so an
interrupted sweep resumes by skipping exactly the finished runs; half-done training is redone. Resuming with a
different protocol is refused (the numbers would not be comparable) unless ``overwrite``, which removes only
what sgid evaluate wrote.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from sgid.errors import RunDirError
from sgid.evaluate.stats import RunRecord
from sgid.manifest import json_number
from sgid.owned import OwnedFolder, atomic_write

PROTOCOL_FILE = "evaluation.json"
LOCK = ".sgid-evaluate-lock"
OUTPUTS = ("runs", "models", "plots", "results.json", "results.md", PROTOCOL_FILE)


def finished_runs(out: Path) -> int:
    """How many runs in ``out`` are finished (their JSON file is in place)."""
    return sum(1 for _ in (Path(out) / "runs").glob("*/*/seed*.json"))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is unreadable ({exc}); delete it to redo that part") from None


def _read_record(path: Path) -> RunRecord:
    """A finished run's record, checked field by field (a hand-edited one made a resumed sweep a traceback, or a
    table cell of 500%)."""
    data = _read_json(path)
    why = _record_problem(data)
    if why is not None:
        raise RunDirError(f"{path} is not a run record sgid evaluate wrote ({why}); delete it to redo that part")
    return RunRecord.from_json(data)


def _record_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    names = {f.name for f in fields(RunRecord)}
    unknown = sorted(set(data) - names)
    missing = sorted(
        f.name
        for f in fields(RunRecord)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data
    )
    if unknown or missing:
        return f"unknown field {unknown[0]}" if unknown else f"no {missing[0]}"
    for name in ("dataset", "variant", "label", "method"):
        if not isinstance(data[name], str):
            return f"{name} is not text"
    if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
        return "seed is not a whole number"
    if not json_number(data["accuracy"]) or not 0 <= data["accuracy"] <= 1:
        return "accuracy is not a fraction in [0, 1]"
    per_class = data["per_class"]
    if not isinstance(per_class, dict) or not all(
        v is None or (json_number(v) and 0 <= v <= 1) for v in per_class.values()
    ):
        return "per_class is not class -> fraction in [0, 1] or null"
    if data.get("mix") is not None and not isinstance(data["mix"], str):
        return "mix is not text"
    if data.get("proportion") is not None and not json_number(data["proportion"]):
        return "proportion is not a number"
    if not isinstance(data.get("reference", False), bool):
        return "reference is not true or false"
    if not isinstance(data.get("details", {}), dict):
        return "details is not an object"
    return None


class EvaluationStore(OwnedFolder):
    marker = PROTOCOL_FILE
    lock_name = LOCK
    holds = "an evaluation"
    identity_key = "protocol"
    unnamed = ""
    busy = "another sgid evaluate is writing to {path}; wait for it or use another --out"
    foreign = "{path} is not empty and holds no sgid evaluation (" + PROTOCOL_FILE + "); choose an empty or new folder"

    def __init__(
        self, out: Path, protocol: dict[str, Any], *, overwrite: bool = False, info: dict[str, Any] | None = None
    ) -> None:
        super().__init__(out, protocol, overwrite=overwrite)
        self.info = info or {}
        self._created: list[Path] = []  # what open() created (removed again if nothing finishes)

    @property
    def out(self) -> Path:
        return self.path

    @property
    def protocol(self) -> dict[str, Any]:
        return self.identity

    def open(self) -> EvaluationStore:
        if not self.out.exists():
            self._created.append(self.out)
        if self.claim():
            self.clear()
        protocol_file = self.out / PROTOCOL_FILE
        if not protocol_file.exists():
            self._created.insert(0, protocol_file)
            _write_json(protocol_file, {**self.stamp(), **self.info})
        return self

    def read_marker(self) -> dict[str, Any]:
        previous = _read_json(self.out / PROTOCOL_FILE)
        return previous if isinstance(previous, dict) else {}

    def __enter__(self) -> EvaluationStore:
        return self.open()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._discard_unused()
        self.close()

    def _discard_unused(self) -> None:
        """A start that failed before any run finished (missing weights, Ctrl-C) leaves nothing behind, so a
        retry with corrected settings is not refused as "an evaluation with different settings"."""
        if not self._created or any(p.is_file() for p in (self.out / "runs").rglob("*")):
            return  # finished runs or learning-rate searches: worth keeping, and they match the protocol
        shutil.rmtree(self.out / "runs", ignore_errors=True)
        for path in self._created:
            if path.is_dir():
                if all(p.name == LOCK for p in path.iterdir()):
                    self._lock.release()
                    shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove what sgid evaluate wrote (never other files)."""
        self.remove(OUTPUTS)

    # -- runs ------------------------------------------------------------------------------------------------
    def run_path(self, dataset: str, variant: str, seed: int) -> Path:
        return self.out / "runs" / dataset / variant / f"seed{seed}.json"

    def model_dir(self, dataset: str, variant: str, seed: int) -> Path:
        return self.out / "models" / dataset / variant / f"seed{seed}"

    def finished(self, dataset: str, variant: str, seed: int, fingerprint: str) -> RunRecord | None:
        """The finished run, if any; a run made from other data is an error (the same --out, other files)."""
        path = self.run_path(dataset, variant, seed)
        if not path.exists():
            return None
        record = _read_record(path)
        if record.details.get("data_fingerprint") != fingerprint:
            raise RunDirError(
                f"{path} was made from different data for dataset {dataset!r}; use another --out, "
                f"another dataset name, or --overwrite"
            )
        return record

    def save(self, record: RunRecord) -> None:
        _write_json(self.run_path(record.dataset, record.variant, record.seed), record.to_json())

    def records(self) -> list[RunRecord]:
        """Every finished run in OUT, sorted by dataset, variant folder and seed."""
        paths = sorted((self.out / "runs").glob("*/*/seed*.json"))  # as finished_runs() counts them
        records = [_read_record(p) for p in paths]
        return sorted(records, key=lambda r: (r.dataset, r.variant, r.seed))

    # -- learning-rate search ----------------------------------------------------------------------------
    def lr_search_path(self, dataset: str, variant: str) -> Path:
        return self.out / "runs" / dataset / variant / "lr_search.json"

    def lr_search(self, dataset: str, variant: str) -> dict[str, Any] | None:
        path = self.lr_search_path(dataset, variant)
        return _read_json(path) if path.exists() else None

    def save_lr_search(self, dataset: str, variant: str, result: dict[str, Any]) -> None:
        _write_json(self.lr_search_path(dataset, variant), result)

    def write(self, relpath: str, data: Any) -> Path:
        """Write ``data`` (text, or JSON for anything else) atomically to ``OUT/relpath``."""
        if isinstance(data, str):
            return super().write(relpath, data.encode("utf-8"))
        _write_json(self.out / relpath, data)
        return self.out / relpath
