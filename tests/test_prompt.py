"""Step 2: the prompt and its weighting (paper §3.2)."""

from __future__ import annotations

import pytest
import torch

from sgid.errors import SgidError
from sgid.stages.prompt import PromptEncoder, build_prompt


def test_prompt_modes() -> None:
    caption = "a cat sitting on grass"
    assert build_prompt("cat", caption).text == "A picture of a cat, a cat sitting on grass"
    assert build_prompt("cat", caption, "label").text == "A picture of a cat"
    assert build_prompt("cat", caption, "caption").text == caption
    assert build_prompt("cat", caption, "none").text == ""
    assert build_prompt("cat", caption, template="a photo of the {label}").text.startswith("a photo of the cat, ")
    with pytest.raises(SgidError, match="unknown prompt mode"):
        build_prompt("cat", caption, "all")


def test_prompt_spans_cover_label_sentence_and_caption() -> None:
    p = build_prompt("golden retriever", "a dog on a field")
    assert p.text[slice(*p.label_span)] == "A picture of a golden retriever"
    assert p.text[slice(*p.caption_span)] == "a dog on a field"


@pytest.fixture(scope="module")
def encoder(img2img_pipe):  # type: ignore[no-untyped-def]
    return PromptEncoder(img2img_pipe.tokenizer, img2img_pipe.text_encoder)


def test_plain_encoding_equals_diffusers(encoder, img2img_pipe) -> None:  # type: ignore[no-untyped-def]
    texts = ["A picture of a cat, a cat on grass", ""]
    ours = encoder.encode_texts(texts)
    theirs, _ = img2img_pipe.encode_prompt(texts, torch.device("cpu"), 1, False)
    assert torch.equal(ours, theirs)


def test_weights_one_equal_plain_encoding(encoder) -> None:  # type: ignore[no-untyped-def]
    prompts = [build_prompt("cat", "a cat on grass"), build_prompt("dog", "a dog")]
    assert torch.equal(encoder.encode(prompts, [(1.0, 1.0)] * 2), encoder.encode_texts([p.text for p in prompts]))


def test_weighting_scales_exactly_label_and_caption_rows(encoder) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt("cat", "a dog on grass")
    plain = encoder.encode_texts([prompt.text])[0]
    weighted = encoder.encode([prompt], [(1.5, 0.9)])[0]
    tokens = encoder.tokenizer.convert_ids_to_tokens(encoder.tokenizer(prompt.text).input_ids)
    # <start> a picture of a cat , a dog on grass <end> <pad>...
    label_rows = range(1, 1 + len(encoder.tokenizer("A picture of a cat", add_special_tokens=False).input_ids))
    comma = label_rows.stop
    assert tokens[comma] == ",</w>"
    caption_rows = range(comma + 1, len(tokens) - 1)
    expected = torch.ones(plain.shape[0])
    expected[list(label_rows)] = 1.5
    expected[list(caption_rows)] = 0.9
    assert torch.equal(weighted, plain * expected.unsqueeze(-1))
    # start, separator, end and padding rows are untouched
    for row in [0, comma, len(tokens) - 1, plain.shape[0] - 1]:
        assert torch.equal(weighted[row], plain[row])


def test_label_only_prompt_weights_only_the_label(encoder) -> None:  # type: ignore[no-untyped-def]
    prompt = build_prompt("cat", None, "label")
    weights = encoder.token_weights(prompt, 1.5, 0.9)
    n = len(encoder.tokenizer(prompt.text, add_special_tokens=False).input_ids)
    assert weights[1 : 1 + n].eq(1.5).all() and weights[0] == 1 and weights[1 + n :].eq(1).all()
