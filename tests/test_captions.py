"""Step 1: BLIP captions by beam search and nucleus sampling, CLIP similarity (paper §3.1)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter

import pytest
import torch

from conftest import noise_image
from sgid.methods.sgid import choose_caption
from sgid.stages.caption import Caption, Captioner, CaptionSettings, GumbelSampler


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


# -- decoding settings through the real Captioner, with controlled logits ---------------------------------------
class TableHead(torch.nn.Module):
    """A stub language head for BLIP's text decoder: the next token's log-probabilities are a row of ``table``
    chosen by the previous token. Everything else (decoder, generate, processors, Captioner) is real."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.input_ids: torch.Tensor | None = None

    def remember(self, module, args, kwargs) -> None:  # type: ignore[no-untyped-def]
        self.input_ids = kwargs["input_ids"]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self.input_ids is not None
        return self.table[self.input_ids[:, -hidden.shape[1] :]].to(hidden.dtype)


def with_table(captioner, rows: dict[str | None, dict[str, float]], **settings) -> Captioner:  # type: ignore[no-untyped-def]
    """A Captioner over a copy of the tiny BLIP whose head follows ``rows``: previous word (None: any other) ->
    {next word: probability}; "[SEP]" ends the caption."""
    tokenizer = captioner.processor.tokenizer
    vocab = captioner.model.config.text_config.vocab_size
    table = torch.full((vocab, vocab), -1e4)
    for previous, following in sorted(rows.items(), key=lambda item: item[0] is not None):
        logits = torch.full((vocab,), -1e4)
        for word, p in following.items():
            logits[tokenizer.convert_tokens_to_ids(word)] = math.log(p)
        if previous is None:
            table[:] = logits
        else:
            table[tokenizer.convert_tokens_to_ids(previous)] = logits
    model = copy.deepcopy(captioner.model)
    head = TableHead(table)
    model.text_decoder.cls = head
    model.text_decoder.register_forward_pre_hook(head.remember, with_kwargs=True)
    defaults = {"beam_captions": 0, "num_beams": 1, "nucleus_captions": 0, "min_length": 1, "max_length": 12}
    return Captioner(model, captioner.processor, CaptionSettings(**{**defaults, **settings}))


def words(captions: list[list[Caption]]) -> Counter:
    return Counter(w for per_image in captions for c in per_image for w in c.text.split())


UNIGRAM = {None: {"cat": 0.5, "dog": 0.3, "red": 0.15, "sky": 0.05}}  # no [SEP]: captions run to max_length


def test_nucleus_captions_never_sample_outside_the_top_p_mass(captioner) -> None:  # type: ignore[no-untyped-def]
    nucleus = with_table(captioner, UNIGRAM, nucleus_captions=20, top_p=0.9)  # keeps cat, dog, red (0.95)
    counts = words(nucleus([noise_image(1), noise_image(2)], [1, 2]))
    total = sum(counts.values())
    assert total == 2 * 20 * 11 and counts["sky"] == 0
    for word, p in (("cat", 0.5), ("dog", 0.3), ("red", 0.15)):  # and the nucleus is sampled as renormalised
        assert counts[word] / total == pytest.approx(p / 0.95, abs=0.06)
    wide = with_table(captioner, UNIGRAM, nucleus_captions=20, top_p=1.0)
    assert words(wide([noise_image(1), noise_image(2)], [1, 2]))["sky"] > 0


def test_top_k_cuts_before_the_nucleus(captioner) -> None:  # type: ignore[no-untyped-def]
    top2 = with_table(captioner, UNIGRAM, nucleus_captions=20, top_p=0.9, top_k=2)
    counts = words(top2([noise_image(1)], [1]))
    assert set(counts) == {"cat", "dog"}


def test_repetition_penalty_changes_the_captions(captioner) -> None:  # type: ignore[no-untyped-def]
    plain = with_table(captioner, UNIGRAM, beam_captions=2, num_beams=2, max_length=6)
    penalised = with_table(captioner, UNIGRAM, beam_captions=2, num_beams=2, max_length=6, repetition_penalty=3.0)
    assert plain([noise_image(1)], [1])[0][0].text == "cat cat cat cat cat"
    assert len(set(penalised([noise_image(1)], [1])[0][0].text.split())) > 1


def test_min_and_max_length_bound_every_caption(captioner) -> None:  # type: ignore[no-untyped-def]
    ending = {None: {"[SEP]": 0.5, "cat": 0.3, "dog": 0.2}}  # likely to stop at once
    for min_length, max_length in ((1, 12), (6, 12), (3, 4)):
        made = with_table(
            captioner,
            ending,
            beam_captions=2,
            num_beams=2,
            nucleus_captions=10,
            min_length=min_length,
            max_length=max_length,
        )([noise_image(1)], [3])[0]
        lengths = {len(c.text.split()) for c in made}
        # lengths count the start token, as BLIP's generate does
        assert min(lengths) >= min_length - 1 and max(lengths) <= max_length - 1
        if min_length == 1:
            assert min(lengths) <= 1
        else:
            assert min(lengths) == min_length - 1  # [SEP] is the likeliest token: captions end as soon as allowed
    running = with_table(captioner, UNIGRAM, nucleus_captions=4, max_length=7)([noise_image(1)], [3])[0]
    assert {len(c.text.split()) for c in running} == {6}


TRAP = {  # greedy takes "dog" (0.6) but the best two-word caption is "cat red" (0.4)
    "[DEC]": {"dog": 0.6, "cat": 0.4},
    "dog": {"red": 0.25, "sky": 0.25, "grass": 0.25, "tree": 0.25},
    "cat": {"red": 1.0},
    None: {"[SEP]": 1.0},
}


def test_beam_count_changes_the_beam_captions(captioner) -> None:  # type: ignore[no-untyped-def]
    greedy = with_table(captioner, TRAP, beam_captions=1, num_beams=1)([noise_image(1)], [1])[0]
    wide = with_table(captioner, TRAP, beam_captions=1, num_beams=2)([noise_image(1)], [1])[0]
    assert [c.text for c in greedy] == ["dog red"] and [c.text for c in wide] == ["cat red"]


def test_a_caption_depends_only_on_its_image_and_seed(captioner) -> None:  # type: ignore[no-untyped-def]
    image = noise_image(4)
    alone = captioner([image], [5])[0]
    assert captioner([noise_image(8), image], [6, 5])[1] == alone
    assert captioner([image, noise_image(9), noise_image(10)], [5, 7, 8])[0] == alone
    assert captioner([image], [6])[0][10:] != alone[10:]  # another seed, other nucleus captions
