"""Verdicts and tables: paired t-tests equal scipy's, results.md has table 1's layout, plots are written."""

from __future__ import annotations

from dataclasses import replace
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
    from sgid.evaluate.stats import compare

    constant = compare([0.5, 0.5, 0.5], [1.0, 1.0, 1.0])  # every difference -0.5: scipy says p = 0, keep it
    assert constant.p_value == stats.ttest_rel([0.5] * 3, [1.0] * 3).pvalue == 0.0
    assert constant.delta == -0.5 and constant.ci95 is None and constant.effect_size is None
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


# -- issue 10, point 5: what a star means ---------------------------------------------------------------------


def test_confidence_interval_and_effect_size_equal_scipys(records) -> None:
    rows = {(s.dataset, s.variant): s for s in summarize(records)}
    for dataset in ("pets", "dtd"):
        for variant, values in (("randaugment", BETTER), ("cutmix", WORSE)):
            row = rows[(dataset, variant)]
            result = stats.ttest_rel(values[dataset], BASE[dataset])
            interval = result.confidence_interval(0.95)
            assert row.ci95 == pytest.approx((interval.low, interval.high), rel=1e-9)
            diffs = np.subtract(values[dataset], BASE[dataset])
            assert row.effect_size == pytest.approx(diffs.mean() / diffs.std(ddof=1), rel=1e-12)
            assert row.effect_size == pytest.approx(result.statistic / np.sqrt(5), rel=1e-9)  # d_z = t / sqrt(n)
            assert row.compared_to == "baseline" and row.pairs == 5
    assert rows[("pets", "baseline")].ci95 is None and rows[("pets", "baseline")].compared_to is None


def test_holm_equals_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    from sgid.evaluate.stats import holm

    for family in ([0.01, 0.04, 0.03, 0.005], [0.2, 0.01, 0.5], [0.049, 0.049], [0.9], [0.001, 0.8, 0.3, 0.02, 0.04]):
        assert holm(family) == pytest.approx(list(multipletests(family, method="holm")[1]), rel=1e-12)
    assert holm([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04])


def test_holm_correction_over_the_rows_of_each_column(records) -> None:
    from statsmodels.stats.multitest import multipletests

    close = _records("moex", {"pets": [0.52, 0.52, 0.50, 0.53, 0.51], "dtd": [0.31, 0.30, 0.30, 0.33, 0.31]})
    same = _records("same", {"pets": [0.51, 0.51, 0.50, 0.50, 0.50], "dtd": [0.31, 0.30, 0.29, 0.33, 0.30]})
    everything = [*records, *close, *same]
    plain = {(s.dataset, s.variant): s for s in summarize(everything)}
    holm_rows = {(s.dataset, s.variant): s for s in summarize(everything, correction="holm")}
    for dataset in ("pets", "dtd", AVG):
        tested = ["randaugment", "cutmix", "moex", "same"]
        raw = [plain[(dataset, v)].p_value for v in tested]
        expected = multipletests(raw, method="holm")[1]
        for variant, adjusted in zip(tested, expected, strict=True):
            row = holm_rows[(dataset, variant)]
            assert row.p_value == plain[(dataset, variant)].p_value  # the raw p stays scipy's
            assert row.p_adjusted == pytest.approx(adjusted, rel=1e-12)
            assert row.significant == (adjusted < 0.05)
        assert all(plain[(dataset, v)].p_adjusted is None for v in tested)
    # moex on pets: p = 0.033 alone, 0.065 after Holm over four rows
    assert plain[("pets", "moex")].p_value < 0.05 and plain[("pets", "moex")].mark == "*"
    assert holm_rows[("pets", "moex")].p_adjusted > 0.05 and holm_rows[("pets", "moex")].mark == ""


def test_compare_to_best_and_to_a_method(records) -> None:
    best = {(s.dataset, s.variant): s for s in summarize(records, compare_to="best")}
    # pets: randaugment is best; everything else is tested against it, and it against the runner-up (baseline)
    assert best[("pets", "baseline")].compared_to == "randaugment"
    assert best[("pets", "cutmix")].compared_to == "randaugment"
    assert best[("pets", "randaugment")].compared_to == "baseline"
    expected = stats.ttest_rel(BASE["pets"], BETTER["pets"]).pvalue
    assert best[("pets", "baseline")].p_value == pytest.approx(expected, rel=1e-12)
    assert best[("pets", "baseline")].mark == "†" and best[("pets", "randaugment")].mark == "*"
    versus = {(s.dataset, s.variant): s for s in summarize(records, compare_to="cutmix")}
    assert versus[("dtd", "cutmix")].compared_to is None
    assert versus[("dtd", "randaugment")].compared_to == "cutmix"
    expected = stats.ttest_rel(BETTER["dtd"], WORSE["dtd"]).pvalue
    assert versus[("dtd", "randaugment")].p_value == pytest.approx(expected, rel=1e-12)


def test_the_caption_says_what_a_star_compares_to(records) -> None:
    text = results_markdown("t", {}, summarize(records, compare_to="best"), records, "best", "holm")
    assert "Compared to: **best**." in text and "Holm-adjusted over the rows of each column" in text
    assert "## Difference to the best method" in text and "vs randaugment" in text
    default = results_markdown("t", {}, summarize(records), records)
    assert "Compared to: **baseline**." in default and "better than the baseline with p < 0.05" in default
    row = next(s for s in summarize(records) if s.dataset == "pets" and s.variant == "randaugment")
    assert row.ci95 is not None and row.effect_size is not None
    cell = f"{100 * row.delta:+.2f} [{100 * row.ci95[0]:+.2f}, {100 * row.ci95[1]:+.2f}], d_z {row.effect_size:.2f}"
    assert cell in default


def test_plots_draw_class_names_as_written_not_as_maths_notation(tmp_path: Path) -> None:
    """A class named like "$5_to_$10" made matplotlib parse maths notation and fail after the work was done."""
    from sgid.concepts.monitor import loss_plot_png
    from sgid.metrics.report import write_plots as metrics_plots

    odd = {"$5_to_$10": 0.4, "$x": 0.6, "cat": 0.5}
    records = [replace(r, per_class=odd) for r in [*_records("baseline", BASE), *_records("randaugment", BETTER)]]
    files = write_plots(summarize(records), tmp_path / "evaluate")
    assert files and all(f.read_bytes()[:4] == b"\x89PNG" for f in files)
    per_class = {name: {"similarity": {"mean": v}, "fid": 1.0} for name, v in odd.items()}
    report = {"per_class": per_class, "overall": {"similarity": {"mean": 0.5}, "fid": 1.0}}
    assert metrics_plots(report, tmp_path / "metrics") == ["metrics/similarity.png", "metrics/fid.png"]
    assert loss_plot_png([(1.0, 1.0, float("nan"))] * 3, "$5_to_$10 <sgid-$x>")[:4] == b"\x89PNG"
