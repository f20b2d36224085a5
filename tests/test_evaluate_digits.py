"""The offline digits experiment (experiments/digits.py) and its report (docs/experiments/digits.md)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["baseline", "random_erasing", "cutmix", "randaugment", "moex"]


def _experiment():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("digits_experiment", ROOT / "experiments" / "digits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _doc_tables() -> list[dict[str, list[str]]]:
    """Method -> cells, for each results table of docs/experiments/digits.md (a header '| Method | digits | Avg. |');
    the first is the main table, the others the same command on other CPUs."""
    text = (ROOT / "docs" / "experiments" / "digits.md").read_text(encoding="utf-8")
    tables: list[dict[str, list[str]]] = []
    rows: dict[str, list[str]] | None = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| Method | digits | Avg. |"):
            rows = {}
            tables.append(rows)
        elif not line.startswith("| "):
            rows = None
        elif rows is not None and cells[0] in METHODS:
            rows[cells[0]] = cells[1:]
    return tables


def _doc_table() -> dict[str, list[str]]:
    """Method -> cells of the main table in docs/experiments/digits.md."""
    return _doc_tables()[0]


def test_digits_data_is_32x32_rgb_split_in_halves() -> None:
    data = _experiment().digits_dataset()
    assert data.classes == tuple(str(i) for i in range(10))
    assert abs(len(data.train) - len(data.test)) <= 10 and len(data.train) + len(data.test) == 1797
    image = data.train[0].load()
    assert image.size == (32, 32) and image.mode == "RGB"


def test_digits_experiment_runs_through_the_evaluate_api(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "digits"
    assert (
        _experiment().main(
            ["--out", str(out), "--seeds", "2", "--epochs", "1", "--methods", "baseline,cutmix", "--quiet"]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert {(r["variant"], r["seed"]) for r in results["runs"]} == {
        (m, s) for m in ("baseline", "cutmix") for s in (0, 1)
    }
    assert all(r["details"]["train_real"] == 100 for r in results["runs"])  # 10-shot, 10 classes
    assert "| Method | digits | Avg. |" in capsys.readouterr().out


def test_the_report_holds_a_result_for_every_method() -> None:
    rows = _doc_table()
    assert list(rows) == METHODS
    for method, cells in rows.items():
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d[*†]?", cells[0]), (method, cells)
    assert (
        "python experiments/digits.py --out experiments/out/digits"
        in (ROOT / "docs" / "experiments" / "digits.md").read_text()
    )


@pytest.mark.slow
def test_the_report_has_the_numbers_the_experiment_produces(tmp_path: Path) -> None:
    """Reruns the whole experiment (about 5 minutes) and compares its table with the report's."""
    out = tmp_path / "digits"
    assert _experiment().main(["--out", str(out), "--quiet"]) == 0
    produced = {}
    for line in (out / "results.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in METHODS and cells[0] not in produced:
            produced[cells[0]] = cells[1:]
    assert produced in _doc_tables()  # training repeats on one CPU, not across CPU models: one table per CPU
