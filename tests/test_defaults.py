"""The paper's values are the defaults (SGID §4.2, appendix I, table 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgid.config import AugmentConfig
from sgid.errors import SgidError
from sgid.presets import PRESETS
from sgid.stages.caption import CaptionSettings
from sgid.stages.guidance import PAPER_GUIDANCE, GuidanceMap, parse_guidance


def config(**options):  # type: ignore[no-untyped-def]
    return AugmentConfig.build(Path("in"), Path("out"), **options)


def test_paper_defaults() -> None:
    c = config()
    assert c.method == "sgid"
    assert (c.captions.beam_captions, c.captions.nucleus_captions) == (10, 10)
    assert c.captions.top_p == 0.9 and c.captions.top_k == 0
    assert (c.captions.min_length, c.captions.max_length) == (5, 20)
    assert c.captions.num_beams == 10  # 10 beam captions need 10 beams (documented deviation from num_beams=3)
    assert c.label_template == "A picture of a {label}"
    assert c.prompt == "complete" and c.prompt_weighting
    assert (c.label_weight, c.caption_weight) == (1.5, 0.9)
    assert c.weights == (1.5, 0.9)
    assert c.guidance == "paper" and c.guidance_map == PAPER_GUIDANCE
    assert c.steps == 100 and c.noise == 0.5 and c.multiplier == 1
    assert c.similarity == "cosine"
    assert not c.safety_checker and not c.diffusers_guidance


def test_paper_beam_width_is_a_setting() -> None:
    settings = CaptionSettings(num_beams=3, beam_captions=3)
    assert settings.num_beams == 3
    with pytest.raises(SgidError, match="at most one caption per beam"):
        CaptionSettings(num_beams=3, beam_captions=10)


@pytest.mark.parametrize(
    ("s", "g"),
    # the paper's f(s) = -4s^2 + 2s + 1 at hand-computed points; s* = 0.57 is its figure 2 (g = 0.8404)
    [(0.0, 1.0), (0.25, 1.25), (0.5, 1.0), (0.57, 0.8404), (1.0, -1.0), (0.3, 1.24), (-0.1, 0.76), (0.2, 1.24)],
)
def test_guidance_mapping_f(s: float, g: float) -> None:
    assert PAPER_GUIDANCE.raw(s) == pytest.approx(g, abs=1e-12)
    assert PAPER_GUIDANCE(s) == pytest.approx(max(g, 0.0), abs=1e-12)  # applied: floored at 0


def test_constant_guidance_and_parsing() -> None:
    assert parse_guidance("7.5")(0.3) == 7.5
    assert parse_guidance(2)(None) == 2.0
    assert parse_guidance("paper") is PAPER_GUIDANCE
    assert GuidanceMap().describe() == "f(s) = -4*s^2 + 2*s + 1, floored at 0"
    assert GuidanceMap(floor=None).describe() == "f(s) = -4*s^2 + 2*s + 1"
    with pytest.raises(SgidError, match="--guidance"):
        parse_guidance("strong")
    with pytest.raises(ValueError, match="needs a similarity"):
        PAPER_GUIDANCE(None)


# table 8 of the paper: (caption guidance, prompt weighting)
TABLE_8 = {
    "cifar100": ("nucleus", True),
    "cifar10": ("clip", True),
    "caltech101": ("nucleus", False),
    "stanford_cars": (None, False),
    "flowers102": ("clip", True),
    "oxford_pets": ("beam", False),
    "dtd": ("clip", True),
}


@pytest.mark.parametrize("name", sorted(TABLE_8))
def test_presets_follow_table_8(name: str) -> None:
    caption, weighting = TABLE_8[name]
    c = config(preset=name)
    assert c.prompt_weighting is weighting
    if caption is None:  # no caption guidance: label-only prompt
        assert c.prompt == "label"
    else:
        assert c.prompt == "complete" and c.caption == caption


def test_every_preset_is_tested() -> None:
    assert set(PRESETS.names()) == set(TABLE_8)


def test_explicit_options_override_the_preset() -> None:
    c = config(preset="oxford_pets", caption="nucleus", prompt_weighting=True)
    assert c.caption == "nucleus" and c.prompt_weighting
    assert config(preset="oxford_pets").caption == "beam"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"noise": 1.5}, "--noise"),
        ({"noise": -0.1}, "--noise"),
        ({"steps": 0}, "--steps"),
        ({"multiplier": 0}, "--multiplier"),
        ({"batch_size": 0}, "--batch-size"),
        ({"preset": "imagenet"}, "unknown preset 'imagenet'"),
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"models": "huge"}, "unknown models preset"),
        ({"caption": "best"}, "--caption"),
        ({"prompt": "long"}, "--prompt"),
        ({"label_weight": -1.0}, "--label-weight"),
        ({"top_p": 0.0}, "invalid --top-p 0.0"),
        ({"label_template": "A picture"}, "{label}"),
        ({"caption": "beam", "beam_captions": 0}, "beam captions"),
    ],
)
def test_invalid_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(SgidError, match=message.replace("{", r"\{").replace("}", r"\}")):
        config(**options)


def test_identity_ignores_execution_settings() -> None:
    a = config(batch_size=1, quiet=True).identity()
    b = config(batch_size=8, quiet=False).identity()
    assert a == b
    assert config(noise=0.3).identity() != a
