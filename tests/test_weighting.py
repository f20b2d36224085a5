"""Prompt weighting modes (issue 10, point 3): ``--weighting literal | compel | mean-restore``, each checked
against a tensor computed here by hand from the text encoder's raw outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import FAST, make_image_folder
from sgid.errors import RunDirError
from sgid.pipeline import augment
from sgid.stages.prompt import WEIGHTINGS, PromptEncoder, build_prompt, prompt_fragments

LABEL, CAPTION = "cat", "a dog on grass"


@pytest.fixture(scope="module")
def parts(img2img_pipe):  # type: ignore[no-untyped-def]
    """The tokenizer and text encoder, the prompt's token ids, and its label and caption rows (by hand)."""
    tokenizer, text_encoder = img2img_pipe.tokenizer, img2img_pipe.text_encoder
    prompt = build_prompt(LABEL, CAPTION)
    ids = tokenizer(prompt.text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    n_label = len(tokenizer("A picture of a cat", add_special_tokens=False).input_ids)
    n_caption = len(tokenizer(CAPTION, add_special_tokens=False).input_ids)
    label_rows = list(range(1, 1 + n_label))  # after <start>
    caption_rows = list(range(2 + n_label, 2 + n_label + n_caption))  # after the comma
    assert tokenizer.convert_ids_to_tokens([int(ids[0, 1 + n_label])]) == [",</w>"]
    return tokenizer, text_encoder, prompt, ids, label_rows, caption_rows


def hand_weights(parts, wl: float, wc: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
    *_, label_rows, caption_rows = parts
    w = torch.ones(77)
    w[label_rows], w[caption_rows] = wl, wc
    return w.view(1, 77, 1)


@torch.no_grad()
def raw(text_encoder, ids, mask=None) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return text_encoder(ids, attention_mask=mask)[0]


def encode(parts, mode: str, wl: float = 1.5, wc: float = 0.9) -> torch.Tensor:  # type: ignore[no-untyped-def]
    tokenizer, text_encoder, prompt, *_ = parts
    return PromptEncoder(tokenizer, text_encoder, mode).encode([prompt], [(wl, wc)])


def test_registry_and_default() -> None:
    assert WEIGHTINGS.names() == ["literal", "mean-restore", "compel"]
    from sgid.config import AugmentConfig

    assert AugmentConfig.build("in", "out").weighting == "literal"


def test_literal_multiplies_output_rows(parts) -> None:  # type: ignore[no-untyped-def]
    _, text_encoder, _, ids, *_ = parts
    z = raw(text_encoder, ids)
    expected = z * hand_weights(parts, 1.5, 0.9)
    assert torch.equal(encode(parts, "literal"), expected)


def test_mean_restore_multiplies_then_restores_the_mean(parts) -> None:  # type: ignore[no-untyped-def]
    _, text_encoder, _, ids, *_ = parts
    z = raw(text_encoder, ids)
    multiplied = z * hand_weights(parts, 1.5, 0.9)
    expected = multiplied * (z.mean() / multiplied.mean())
    ours = encode(parts, "mean-restore")
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
    assert ours.mean().item() == pytest.approx(z.mean().item(), rel=1e-5)
    assert not torch.allclose(ours, multiplied)


def test_compel_moves_rows_away_from_the_empty_prompt(parts) -> None:  # type: ignore[no-untyped-def]
    tokenizer, text_encoder, _, ids, _, caption_rows = parts
    empty_ids = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    empty = raw(text_encoder, empty_ids)

    def away_from_empty(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.where(w == 1, z, empty + (z - empty) * w)

    # both weights >= 1: empty + (z - empty)·w on the weighted rows, the rest untouched
    w_up = hand_weights(parts, 1.5, 1.2)
    z = raw(text_encoder, ids, torch.ones_like(ids))
    torch.testing.assert_close(encode(parts, "compel", 1.5, 1.2), away_from_empty(z, w_up), rtol=1e-5, atol=1e-6)
    # w_c = 0.9 < 1: compel also blends with the prompt whose caption tokens are masked out, by tan((1-w)·π/2)
    w = hand_weights(parts, 1.5, 0.9)
    mask = torch.ones_like(ids)
    mask[0, caption_rows] = 0
    z_without_caption = raw(text_encoder, ids, mask)
    t = math.tan((1 - 0.9) * math.pi / 2)
    expected = (away_from_empty(z, w) + t * away_from_empty(z_without_caption, w)) / (1 + t)
    torch.testing.assert_close(encode(parts, "compel"), expected, rtol=1e-5, atol=1e-6)


def test_the_three_modes_differ_and_unit_weights_are_plain(parts) -> None:  # type: ignore[no-untyped-def]
    tokenizer, text_encoder, prompt, *_ = parts
    results = {mode: encode(parts, mode) for mode in WEIGHTINGS.names()}
    assert not torch.allclose(results["literal"], results["compel"])
    assert not torch.allclose(results["literal"], results["mean-restore"])
    plain = PromptEncoder(tokenizer, text_encoder).encode_texts([prompt.text])
    for mode in WEIGHTINGS.names():
        assert torch.equal(PromptEncoder(tokenizer, text_encoder, mode).encode([prompt], [(1.0, 1.0)]), plain)


def test_prompt_fragments_follow_the_spans() -> None:
    assert prompt_fragments(build_prompt("cat", "a cat"), 1.5, 0.9) == [
        ("A picture of a cat", 1.5),
        (", ", 1.0),
        ("a cat", 0.9),
    ]
    assert prompt_fragments(build_prompt("cat", None, "label"), 1.5, 0.9) == [("A picture of a cat", 1.5)]
    assert prompt_fragments(build_prompt("cat", "a cat", "caption"), 1.5, 0.9) == [("a cat", 0.9)]
    assert prompt_fragments(build_prompt("cat", None, "none"), 1.5, 0.9) == []


def test_mode_in_manifest_and_run_identity(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 1, "b": 1})
    out = tmp_path / "out"
    augment(source, out, weighting="compel", cache_dir=cache_dir, **FAST)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["weighting"] for r in rows] == ["compel", "compel"]
    assert json.loads((out / "run.json").read_text())["identity"]["weighting"] == "compel"
    with pytest.raises(RunDirError, match="weighting"):  # another mode is another run
        augment(source, out, weighting="mean-restore", cache_dir=cache_dir, **FAST)
    augment(source, tmp_path / "off", weighting="compel", prompt_weighting=False, cache_dir=cache_dir, **FAST)
    off = [json.loads(line) for line in (tmp_path / "off" / "metadata.jsonl").read_text().splitlines()]
    assert [(r["weighting"], r["prompt_weighting"], r["label_weight"]) for r in off] == [(None, False, 1.0)] * 2
