"""Every image of every method, made in batches of two, is regenerated alone from its manifest row (prompt,
weights, guidance, noise rate, steps, seed) through the public stage classes and must come out the same within
batched-arithmetic rounding. A wrong weight, guidance scale, seed, noise rate or step count anywhere in a batch
path then fails (SDXL and ControlNet-guided runs too); the last test shows that each of those mistakes moves pixels
far beyond the tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from method_runs import (
    MAX_LEVELS,
    MAX_MEAN_LEVELS,
    METHOD_OPTIONS,
    SPREAD,
    VARIANTS,
    WEIGHTS,
    Replayer,
    assert_close,
    pixels,
    rows,
)


@pytest.fixture(scope="module")
def replay(tiny) -> Replayer:  # type: ignore[no-untyped-def]
    return Replayer(tiny)


@pytest.mark.parametrize("method", [*METHOD_OPTIONS, *VARIANTS])
def test_every_image_replays_alone_from_its_manifest_row(method: str, method_runs, replay) -> None:  # type: ignore[no-untyped-def]
    out = method_runs.reference(method)
    manifest = rows(out)
    assert len(manifest) == 8
    for row in manifest:
        assert_close(pixels(out / row["file_name"]), replay(row, out), row["file_name"])


def test_the_runs_use_settings_far_apart(method_runs) -> None:  # type: ignore[no-untyped-def]
    """What makes the replay bite: mixed guidance inside batches, w_l far from w_c, non-default noise and steps."""
    sgid = rows(method_runs.reference("sgid"))
    assert {r["guidance_scale"] for r in sgid} == set(SPREAD)  # (another tiny model may need another decimal)
    mixed = [i for i in range(0, 8, 2) if sgid[i]["guidance_scale"] != sgid[i + 1]["guidance_scale"]]
    assert len(mixed) >= 2  # batches of two (in manifest order) with two different guidance scales
    for method in ("sgid", "diverse_caption", "text2img"):
        for row in rows(method_runs.reference(method)):
            assert (row["label_weight"], row["caption_weight"]) == tuple(WEIGHTS.values())
    assert {r["denoising_steps"] for r in sgid} == {7}  # int(10 steps x noise 0.7)
    assert {r["denoising_steps"] for r in rows(method_runs.reference("boomerang"))} == {3}
    diverse = rows(method_runs.reference("diverse_caption"))
    assert len({r["guidance_scale"] for r in diverse}) > 1
    for variant, (backend, control) in {"sgid-sdxl": ("sdxl", None), "sgid-canny": ("sd", "canny")}.items():
        made = rows(method_runs.reference(variant))
        assert {(r["backend"], (r.get("control") or {}).get("kind")) for r in made} == {(backend, control)}
        assert [r["guidance_scale"] for r in made] == [r["guidance_scale"] for r in sgid]  # the same captions
        assert {(r["label_weight"], r["caption_weight"], r["denoising_steps"]) for r in made} == {(3.0, 0.2, 7)}


@pytest.mark.parametrize(
    ("method", "change"),
    [
        ("sgid", {"guidance_scale": "other"}),  # another image's guidance, as a batch path that used the first's
        ("sgid", {"label_weight": 0.2, "caption_weight": 3.0}),  # weights swapped
        ("sgid", {"seed": "other"}),
        ("sgid", {"noise_rate": 0.5}),
        ("sgid", {"steps": 11}),
        ("text2img", {"label_weight": 1.0}),
        ("text2img", {"steps": 6}),
        ("boomerang", {"noise_rate": 0.2}),
        ("instruct_pix2pix", {"text_guidance_scale": 7.5}),
        ("instruct_pix2pix", {"image_guidance_scale": 1.5}),
        ("diverse_caption", {"guidance_scale": "other"}),
        ("sgid-sdxl", {"guidance_scale": "other"}),
        ("sgid-sdxl", {"label_weight": 0.2, "caption_weight": 3.0}),
        ("sgid-sdxl", {"seed": "other"}),
        ("sgid-canny", {"guidance_scale": "other"}),
        ("sgid-canny", {"control_scale": 0.3}),
    ],
)
def test_each_wrong_ingredient_moves_pixels_far_beyond_the_tolerance(method, change, method_runs, replay) -> None:  # type: ignore[no-untyped-def]
    out = method_runs.reference(method)
    manifest = rows(out)
    row = max(manifest, key=lambda r: (r["guidance_scale"] or 0, r["k"]))  # the strongest guidance: the clearest case
    borrowed = [k for k, v in change.items() if v == "other"]  # from another image of the run
    other = next(r for r in manifest if all(r[k] != row[k] for k in borrowed))
    change = {k: other[k] if v == "other" else v for k, v in change.items()}
    assert change != {k: row[k] for k in change}
    wrong = replay(row, out, **change)
    difference = np.abs(wrong - pixels(out / row["file_name"]))
    print("\nMUT", method, change, difference.max(), difference.mean())
    assert difference.max() > 3 * MAX_LEVELS or difference.mean() > 10 * MAX_MEAN_LEVELS, (
        f"{change} moves pixels by only {difference.max()} levels, {difference.mean():.3f} on average"
    )
