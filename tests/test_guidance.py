"""Guidance g = f(s*) (paper §3.2): the floor that keeps f's negative values from pushing away from the prompt,
raw and applied g in the manifest, and the end-of-run line on the range of g used (issue 10, point 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST, make_image_folder
from sgid.config import AugmentConfig
from sgid.errors import SgidError
from sgid.pipeline import augment
from sgid.stages.guidance import PAPER_GUIDANCE, GuidanceMap, parse_floor, range_note


def config(**options):  # type: ignore[no-untyped-def]
    return AugmentConfig.build(Path("in"), Path("out"), **options)


# f at typical values, as tabulated in docs/augment.md ("Similarity and guidance")
F_TABLE = {
    0.15: 1.21,
    0.2: 1.24,
    0.25: 1.25,
    0.3: 1.24,
    0.35: 1.21,
    0.4: 1.16,
    0.5: 1.0,
    0.57: 0.8404,
    0.7: 0.44,
    0.81: -0.0044,
    0.9: -0.44,
    1.0: -1.0,
}


@pytest.mark.parametrize(("s", "f"), sorted(F_TABLE.items()))
def test_documented_table_of_f(s: float, f: float) -> None:
    assert PAPER_GUIDANCE.raw(s) == pytest.approx(f, abs=1e-9)
    assert PAPER_GUIDANCE(s) == pytest.approx(max(f, 0.0), abs=1e-9)


def test_floor_defaults_to_zero_and_is_a_setting() -> None:
    c = config()
    assert c.guidance_floor == 0.0
    assert c.guidance_map.raw(0.9) == pytest.approx(-0.44) and c.guidance_map(0.9) == 0.0
    assert c.guidance_map(0.3) == pytest.approx(1.24)  # above the floor: unchanged
    assert config(guidance_floor=1.0).guidance_map(0.57) == 1.0
    assert config(guidance_floor=-1.0).guidance_map(0.9) == pytest.approx(-0.44)
    unclamped = config(guidance_floor="none")
    assert unclamped.guidance_floor is None and unclamped.guidance_map(0.9) == pytest.approx(-0.44)
    assert config(guidance_floor="0.5").guidance_floor == 0.5  # as the command line passes it
    assert GuidanceMap(constant=7.5, floor=10.0)(None) == 7.5  # a constant scale is never clamped
    for bad in ("lots", "nan", "inf"):
        with pytest.raises(SgidError, match="--guidance-floor"):
            parse_floor(bad)
    with pytest.raises(SgidError, match="--guidance-floor"):
        config(guidance_floor="lots")
    assert config().identity()["guidance_floor"] == 0.0 != config(guidance_floor=1.0).identity()["guidance_floor"]


def test_range_note() -> None:
    narrow = range_note([(1.21, 1.21), (1.24, 1.24), (1.16, 1.16)], 0.0)
    assert narrow.startswith("guidance g = f(s*) used: 1.160 to 1.240 over 3 images")
    assert "spans less than 0.1" in narrow and "\n" not in narrow
    wide = range_note([(1.2, 1.2), (-0.44, 0.0), (-0.2, 0.0)], 0.0)
    assert (
        wide == "guidance g = f(s*) used: 0.000 to 1.200 over 3 images (2 clamped to the floor 0; lowest f(s*) -0.440)"
    )


@pytest.fixture
def high_similarities(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLIP similarities where f turns negative, as --similarity softmax gives: 0.9, 0.3, 0.2 … by image."""
    values = iter([0.9, 0.3, 0.95, 0.2])

    def fake(self, images, captions, mode="cosine"):  # type: ignore[no-untyped-def]
        return [[next(values)] * len(group) for group in captions]

    monkeypatch.setattr("sgid.stages.score.ClipScorer.caption_similarities", fake)


def test_negative_f_is_clamped_recorded_and_applied(
    tmp_path: Path, cache_dir: Path, high_similarities: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    from sgid.stages.bundle import GenerateStage

    applied: list[float] = []
    original = GenerateStage.__call__

    def spy(self, batch, pixels, size):  # type: ignore[no-untyped-def]
        applied.extend(s.guidance_scale for s in batch)
        return original(self, batch, pixels, size)

    monkeypatch.setattr(GenerateStage, "__call__", spy)
    source = make_image_folder(tmp_path / "in", {"a": 2, "b": 2})
    options = {**FAST, "quiet": False}
    summary = augment(
        source,
        tmp_path / "out",
        caption_batch_size=1,
        caption_cache=False,
        cache_dir=cache_dir,
        print_summary=True,
        **options,
    )
    rows = [json.loads(line) for line in (tmp_path / "out" / "metadata.jsonl").read_text().splitlines()]
    by_similarity = {row["similarity"]: row for row in rows}
    assert sorted(by_similarity) == [0.2, 0.3, 0.9, 0.95]
    for s, row in by_similarity.items():
        assert row["guidance_raw"] == pytest.approx(-4 * s * s + 2 * s + 1)
        assert row["guidance_scale"] == max(row["guidance_raw"], 0.0)
        assert row["guidance_map"] == "f(s) = -4*s^2 + 2*s + 1, floored at 0"
    assert by_similarity[0.9]["guidance_scale"] == 0.0 and by_similarity[0.9]["guidance_raw"] < 0
    assert sorted(applied) == sorted(row["guidance_scale"] for row in rows)  # what generation used
    err = capsys.readouterr().err
    lines = err.splitlines()
    line = next(x for x in lines if x.startswith("guidance g = f(s*) used"))
    assert lines.index(line) == lines.index(summary.line()) + 1  # printed after the summary, as part of it
    assert summary.notes == (line,)
    assert line == (
        "guidance g = f(s*) used: 0.000 to 1.240 over 4 images (2 clamped to the floor 0; lowest f(s*) -0.710)"
    )
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["guidance_floor"] == 0.0


def plan_with_similarity(similarity: float, **options):  # type: ignore[no-untyped-def]
    """SGID's plan for one image whose best caption has ``similarity``."""
    from sgid.dataset import Source
    from sgid.methods import METHODS, MethodContext
    from sgid.sample import Sample, SourceInfo
    from sgid.stages.caption import Caption

    c = config(**options)
    source = Source(path=Path("in/cat/1.png"), relpath="cat/1.png", class_name="cat", label="cat")
    info = SourceInfo(sha256="0" * 64, size=(32, 32), captions=(Caption("a cat", "beam", similarity),))
    context = MethodContext(
        config=c, sources=(source,), infos={source.relpath: info}, labels={"cat": "cat"}, prompt_labels={"cat": "cat"}
    )
    return METHODS.get(c.method)(c).plan(Sample(source=source, k=0, seed=1, info=info), context)


def test_plan_sets_raw_and_applied_guidance() -> None:
    clamped = plan_with_similarity(0.95)
    assert clamped.guidance_raw == pytest.approx(-0.71) and clamped.guidance_scale == 0.0
    unclamped = plan_with_similarity(0.95, guidance_floor="none")
    assert unclamped.guidance_raw == unclamped.guidance_scale == pytest.approx(-0.71)
    constant = plan_with_similarity(0.95, guidance="7.5")
    assert constant.guidance_raw == constant.guidance_scale == 7.5
