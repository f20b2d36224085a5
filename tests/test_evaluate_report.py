"""Verdicts and tables: paired t-tests equal scipy's, results.md has table 1's layout, plots are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sgid.evaluate.report import results_markdown, write_plots
from sgid.evaluate.stats import AVG, RunRecord, paired_test, summarize

BASE = {"pets": [0.50, 0.52, 0.49, 0.51, 0.50], "dtd": [0.30, 0.31, 0.29, 0.33, 0.30]}
BETTER = {"pets": [0.55, 0.56, 0.55, 0.57, 0.54], "dtd": [0.31, 0.30, 0.31, 0.32, 0.31]}
WORSE = {"pets": [0.40, 0.41, 0.42, 0.40, 0.39], "dtd": [0.20, 0.22, 0.21, 0.20, 0.19]}


def _records(
    variant: str, accuracies: dict[str, list[float]], seeds: list[int] | None = None, **extra: object
) -> list[RunRecord]:
    return [
        RunRecord(
            dataset=dataset,
            variant=variant,
            label=variant,
            method=variant.split("@")[0],
            seed=seed,
            accuracy=acc,
            per_class={"a": acc - 0.05, "b": acc + 0.05},
            **extra,
        )  # type: ignore[arg-type]
        for dataset, values in accuracies.items()
        for seed, acc in zip(seeds or range(len(values)), values, strict=True)
    ]


@pytest.fixture
def records() -> list[RunRecord]:
    return [*_records("baseline", BASE), *_records("randaugment", BETTER), *_records("cutmix", WORSE)]


def test_p_values_equal_scipys_paired_t_test_on_the_per_seed_accuracies(records) -> None:
    rows = {(s.dataset, s.variant): s for s in summarize(records)}
    for dataset in ("pets", "dtd"):
        for variant, values in (("randaugment", BETTER), ("cutmix", WORSE)):
            expected = stats.ttest_rel(values[dataset], BASE[dataset]).pvalue
            assert rows[(dataset, variant)].p_value == pytest.approx(expected, rel=1e-12)
        assert rows[(dataset, "baseline")].p_value is None
    pets = rows[("pets", "randaugment")]
    assert pets.mean == pytest.approx(np.mean(BETTER["pets"]))
    assert pets.std == pytest.approx(np.std(BETTER["pets"], ddof=1))
    assert pets.delta == pytest.approx(np.mean(BETTER["pets"]) - np.mean(BASE["pets"]))
    assert pets.per_class == pytest.approx({"a": np.mean(BETTER["pets"]) - 0.05, "b": np.mean(BETTER["pets"]) + 0.05})


def test_the_average_column_tests_each_seeds_mean_over_datasets(records) -> None:
    avg = {s.variant: s for s in summarize(records) if s.dataset == AVG}
    per_seed = lambda acc: [np.mean([acc["pets"][i], acc["dtd"][i]]) for i in range(5)]  # noqa: E731
    assert avg["randaugment"].mean == pytest.approx(np.mean(per_seed(BETTER)))
    assert avg["randaugment"].p_value == pytest.approx(stats.ttest_rel(per_seed(BETTER), per_seed(BASE)).pvalue)


def test_runs_pair_by_seed_not_by_order() -> None:
    base = _records("baseline", {"d": [0.5, 0.6, 0.7]}, seeds=[0, 1, 2])
    method = _records("moex", {"d": [0.72, 0.51, 0.63]}, seeds=[2, 0, 1])
    row = next(s for s in summarize([*base, *method]) if s.variant == "moex" and s.dataset == "d")
    assert row.seeds == (0, 1, 2) and row.accuracies == (0.51, 0.63, 0.72)
    assert row.p_value == pytest.approx(stats.ttest_rel([0.51, 0.63, 0.72], [0.5, 0.6, 0.7]).pvalue)


def test_marks_significant_gains_with_a_star_and_losses_with_a_dagger(records) -> None:
    rows = {(s.dataset, s.variant): s for s in summarize(records)}
    assert rows[("pets", "randaugment")].mark == "*" and rows[("pets", "cutmix")].mark == "†"
    assert rows[("dtd", "randaugment")].p_value > 0.05 and rows[("dtd", "randaugment")].mark == ""


def test_undefined_tests_are_reported_as_none() -> None:
    assert paired_test([0.5], [0.4]) is None  # one seed
    assert paired_test([0.5, 0.6], [0.5, 0.6]) is None  # zero variance of the differences
    one_seed = summarize([*_records("baseline", {"d": [0.5]}), *_records("moex", {"d": [0.6]})])
    assert all(s.std is None and s.p_value is None for s in one_seed)


def test_results_md_has_table_1s_layout(records) -> None:
    zero_shot = _records("zero_shot_clip", {"pets": [0.8], "dtd": [0.4]}, reference=True)
    text = results_markdown(
        "sgid evaluate: resnet50", {"backbone": "resnet50"}, summarize([*records, *zero_shot]), [*records, *zero_shot]
    )
    lines = text.splitlines()
    start = lines.index("| Method | pets | dtd | Avg. |")
    table = lines[start : start + 6]
    assert table[1] == "| --- | --- | --- | --- |"
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| baseline",
        "| randaugment",
        "| cutmix",
        "| zero_shot_clip (reference)",
    ]
    ra = [np.mean(BETTER["pets"]) * 100, np.std(BETTER["pets"], ddof=1) * 100]
    assert table[3].startswith(f"| randaugment | {ra[0]:.2f} ± {ra[1]:.2f}*")
    assert "†" in table[4] and table[5] == "| zero_shot_clip (reference) | 80.00 | 40.00 | 60.00 |"
    assert "## Difference to the baseline" in text and "## Per-class accuracy: pets" in text
    p = stats.ttest_rel(BETTER["pets"], BASE["pets"]).pvalue
    assert f"(p={p:.3g})*" in text


def test_plots_show_per_class_accuracy_and_accuracy_against_p(tmp_path: Path) -> None:
    sweep = [
        r for p in (0.0, 0.5, 1.0) for r in _records(f"generated@replace-p{p:g}", BETTER, mix="replace", proportion=p)
    ]
    files = write_plots(summarize([*_records("baseline", BASE), *sweep]), tmp_path)
    names = sorted(f.name for f in files)
    assert names == ["accuracy_vs_p_dtd.png", "accuracy_vs_p_pets.png", "per_class_dtd.png", "per_class_pets.png"]
    assert all(f.stat().st_size > 5000 and f.read_bytes()[:4] == b"\x89PNG" for f in files)
