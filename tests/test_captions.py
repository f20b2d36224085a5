"""Step 1: BLIP captions by beam search and nucleus sampling, CLIP similarity (paper §3.1)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import noise_image
from sgid.methods.sgid import choose_caption
from sgid.stages.caption import Caption, Captioner, GumbelSampler


def test_counts_and_strategies(captioner) -> None:  # type: ignore[no-untyped-def]
    captions = captioner([noise_image(1)], [7])[0]
    assert [c.strategy for c in captions] == ["beam"] * 10 + ["nucleus"] * 10
    assert all(c.text for c in captions)


def test_beam_captions_equal_blip_generate(captioner) -> None:  # type: ignore[no-untyped-def]
    images = [noise_image(1), noise_image(2, (40, 24))]
    ours = captioner(images, [0, 1])
    inputs = captioner.processor(images=images, return_tensors="pt")
    out = captioner.model.generate(**inputs, num_beams=10, num_return_sequences=10, min_length=5, max_length=20)
    theirs = [" ".join(t.split()) for t in captioner.processor.batch_decode(out, skip_special_tokens=True)]
    assert [c.text for c in ours[0][:10]] + [c.text for c in ours[1][:10]] == theirs


def test_captions_do_not_depend_on_the_batch(captioner) -> None:  # type: ignore[no-untyped-def]
    images = [noise_image(i) for i in range(3)]
    batched = captioner(images, [10, 11, 12])
    alone = [captioner([im], [seed])[0] for im, seed in zip(images, [10, 11, 12], strict=True)]
    assert batched == alone
    reordered = captioner(images[::-1], [12, 11, 10])
    assert reordered[::-1] == batched


def test_nucleus_sampling_is_seeded_per_image(captioner) -> None:  # type: ignore[no-untyped-def]
    image = noise_image(3)
    a = captioner([image], [1])[0][10:]
    assert a == captioner([image], [1])[0][10:]
    assert a != captioner([image], [2])[0][10:]
    assert len({c.text for c in a}) > 1  # ten different draws, not ten copies


def test_gumbel_sampler_draws_from_the_nucleus_distribution() -> None:
    """argmax(logits + Gumbel) samples softmax(logits); filtered tokens are never drawn."""
    from transformers import TopPLogitsWarper

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    filtered = TopPLogitsWarper(top_p=0.9)(None, logits.clone())  # keeps 0.5, 0.3, 0.15
    n = 20000
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    draws = GumbelSampler(generators)(None, filtered.expand(n, -1)).argmax(-1)
    freq = torch.bincount(draws, minlength=4).float() / n
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    assert freq[3] == 0
    assert torch.allclose(freq, expected, atol=0.015)


def test_paper_beam_width_setting(captioner) -> None:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(captioner.settings, num_beams=3, beam_captions=3, nucleus_captions=2)
    narrow = Captioner(captioner.model, captioner.processor, settings)
    captions = narrow([noise_image(1)], [0])[0]
    assert [c.strategy for c in captions] == ["beam"] * 3 + ["nucleus"] * 2


def test_similarity_is_cosine_of_normalised_embeddings(scorer) -> None:  # type: ignore[no-untyped-def]
    image = noise_image(5)
    texts = ["a cat", "a red car on a road"]
    sims = scorer.caption_similarities([image], [texts])[0]
    img = scorer.image_embeddings([image])[0]
    txt = scorer.text_embeddings(texts)
    assert sims == pytest.approx([float(txt[0] @ img), float(txt[1] @ img)], abs=1e-6)
    assert torch.allclose(img.norm(), torch.tensor(1.0)) and all(-1 <= s <= 1 for s in sims)
    soft = scorer.caption_similarities([image], [texts], mode="softmax")[0]
    assert sum(soft) == pytest.approx(1.0, abs=1e-6)
    assert (soft[0] > soft[1]) == (sims[0] > sims[1])


def test_caption_choice() -> None:
    captions = (
        Caption("beam one", "beam", 0.2),
        Caption("beam two", "beam", 0.4),
        Caption("nucleus one", "nucleus", 0.3),
        Caption("nucleus two", "nucleus", 0.1),
    )
    assert choose_caption(captions, "clip", 0).text == "beam two"
    picks = {choose_caption(captions, "nucleus", seed).text for seed in range(50)}
    assert picks == {"nucleus one", "nucleus two"}
    assert choose_caption(captions, "beam", 3) == choose_caption(captions, "beam", 3)
