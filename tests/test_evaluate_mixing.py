"""Mixing modes, subsets and linking: pure, seeded functions (issue 3, "Done when": replace, balance, swap)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from evaluate_helpers import generated_examples, real_examples
from sgid.errors import SgidError
from sgid.evaluate.data import Example, fraction_subset, k_shot, linked_generated, stratified_split
from sgid.evaluate.mixing import draw, make_plan, mix_add, mix_balance, mix_replace, mix_swap
from sgid.evaluate.train import TrainingSet


def _counts(examples: list[Example]) -> dict[int, int]:
    return dict(sorted(Counter(ex.label for ex in examples).items()))


@pytest.fixture
def real() -> tuple[Example, ...]:
    return real_examples([8, 8, 8])


@pytest.fixture
def generated(real: tuple[Example, ...]) -> tuple[Example, ...]:
    return generated_examples(real, per_image=2)


# -- replace -------------------------------------------------------------------------------------------------


def test_replace_p0_uses_only_real_images_at_fixed_size(real, generated) -> None:
    plan = mix_replace(real, generated, 0.0, seed=1)
    assert sorted(ex.key for ex in plan.examples()) == sorted(ex.key for ex in real)
    assert not any(ex.generated for ex in plan.examples())


def test_replace_p1_uses_only_generated_images_at_fixed_size(real, generated) -> None:
    plan = mix_replace(real, generated, 1.0, seed=1)
    examples = plan.examples()
    assert len(examples) == len(real)
    assert all(ex.generated for ex in examples)
    assert _counts(examples) == _counts(list(real))
    assert len({ex.key for ex in examples}) == len(examples)  # no generated image twice


@pytest.mark.parametrize(("p", "count"), [(0.25, 2), (0.3125, 3), (0.5, 4), (0.45, 4), (0.75, 6)])
def test_replace_p_replaces_that_share_of_every_class_by_their_own_generated_images(real, generated, p, count) -> None:
    plan = mix_replace(real, generated, p, seed=3)
    examples = plan.examples()
    assert len(examples) == len(real)
    assert _counts(examples) == _counts(list(real))
    for label in range(3):
        in_class = [ex for ex in examples if ex.label == label]
        assert sum(ex.generated for ex in in_class) == count  # round(p · 8), halves up (0.3125 · 8 = 2.5 -> 3)
    kept = {ex.key for ex in examples if not ex.generated}
    replaced_sources = {ex.source for ex in examples if ex.generated}
    assert not kept & replaced_sources  # a replaced image is replaced by one of its own generated images
    assert kept | replaced_sources == {ex.key for ex in real}


def test_replace_is_seeded(real, generated) -> None:
    keys = [tuple(ex.key for ex in mix_replace(real, generated, 0.5, seed=s).examples()) for s in (1, 1, 2)]
    assert keys[0] == keys[1] and keys[0] != keys[2]


def test_replace_falls_back_to_other_generated_images_of_the_class(real) -> None:
    # Only the first four images of each class have generated images (with sources); p=1 needs eight per class.
    with_source = generated_examples([ex for ex in real if int(ex.key.split("/")[1][0]) < 4], per_image=2)
    plan = mix_replace(real, with_source, 1.0, seed=0)
    assert all(ex.generated for ex in plan.examples()) and _counts(plan.examples()) == _counts(list(real))


def test_replace_without_enough_generated_images_is_a_one_line_error(real) -> None:
    few = generated_examples(real[:2], per_image=1)
    with pytest.raises(SgidError, match="class 0 needs 8 generated images but has 2"):
        mix_replace(real, few, 1.0, seed=0)


# -- add and balance -----------------------------------------------------------------------------------------


def test_add_expands_by_the_generated_images(real, generated) -> None:
    plan = mix_add(real, generated, None, seed=0)
    assert len(plan.slots) == len(real) + len(generated)  # ×(1+k) with k=2
    half = mix_add(real, generated, 0.5, seed=0)
    assert _counts([ex for ex in half.examples() if ex.generated]) == {0: 8, 1: 8, 2: 8}
    for p, count in ((0.3, 5), (0.28125, 5), (0.9, 14)):  # round(p · 16) per class, halves up (4.5 -> 5)
        some = mix_add(real, generated, p, seed=0)
        assert _counts([ex for ex in some.examples() if ex.generated]) == {0: count, 1: count, 2: count}


def test_balance_reaches_equal_class_counts() -> None:
    real = real_examples([10, 4, 7])
    plan = mix_balance(real, generated_examples(real, per_image=2), None, seed=0)
    assert _counts(plan.examples()) == {0: 10, 1: 10, 2: 10}
    assert sum(ex.generated for ex in plan.examples()) == 6 + 3


def test_balance_fails_when_a_class_cannot_be_topped_up() -> None:
    real = real_examples([10, 2])
    with pytest.raises(SgidError, match="class 1 needs 8 generated images to reach 10 but has 2"):
        mix_balance(real, generated_examples(real, per_image=1), None, seed=0)


def test_balance_takes_no_proportion(real, generated) -> None:
    with pytest.raises(SgidError, match="takes no --proportion"):
        mix_balance(real, generated, 0.5, seed=0)


def test_a_generated_method_needs_linked_generated_images(real) -> None:
    with pytest.raises(SgidError, match="no generated image belongs"):
        make_plan("add", real, (), None, 0)


# -- swap ----------------------------------------------------------------------------------------------------


def test_swap_keeps_the_real_images_and_offers_their_own_generated_ones(real, generated) -> None:
    plan = mix_swap(real, generated, 0.3, seed=0)
    assert plan.examples() == list(real) and plan.swap_probability == 0.3
    for slot in plan.slots:
        assert len(slot.alternatives) == 2 and {a.source for a in slot.alternatives} == {slot.example.key}


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_swap_draws_generated_images_at_rate_p(real, generated, p) -> None:
    plan = mix_swap(real, generated, p, seed=0)
    rng = np.random.default_rng(1234)
    draws = [draw(slot, p, rng) for _ in range(5000) for slot in plan.slots]  # 120,000 draws
    rate = sum(ex.generated for ex in draws) / len(draws)
    # Binomial standard error at p=0.5 and n=120,000 is 0.0014; 0.007 is 5 standard errors.
    assert abs(rate - p) < 0.007
    chosen = Counter(ex.key for ex in draws if ex.generated)
    if p:  # both generated images of a source are used, about equally
        first, second = chosen[f"gen:{real[0].key}#0"], chosen[f"gen:{real[0].key}#1"]
        assert first > 0 and second > 0 and abs(first - second) < 0.5 * (first + second)


def test_training_set_swaps_at_rate_p_per_epoch_and_reproducibly(real, generated) -> None:
    plan = mix_swap(real, generated, 0.25, seed=0)
    dataset = TrainingSet(plan, transform=lambda image: image, seed=7)
    seen = []
    for epoch in range(200):
        dataset.set_epoch(epoch)
        seen.extend(dataset.example(i).generated for i in range(len(dataset)))
    assert abs(sum(seen) / len(seen) - 0.25) < 0.03
    again = TrainingSet(plan, transform=lambda image: image, seed=7)
    again.set_epoch(3)
    dataset.set_epoch(3)
    assert [again.example(i).key for i in range(len(real))] == [dataset.example(i).key for i in range(len(real))]


def test_swap_never_replaces_an_image_without_generated_images(real) -> None:
    generated = generated_examples(real[:1], per_image=1)
    plan = mix_swap(real, generated, 1.0, seed=0)
    rng = np.random.default_rng(0)
    assert all(draw(slot, 1.0, rng).generated == (i == 0) for i, slot in enumerate(plan.slots))


# -- subsets and linking -------------------------------------------------------------------------------------


def test_k_shot_takes_k_per_class_with_a_seed(real) -> None:
    subset = k_shot(real, 3, seed=5)
    assert _counts(list(subset)) == {0: 3, 1: 3, 2: 3}
    assert subset == k_shot(real, 3, seed=5) and subset != k_shot(real, 3, seed=6)
    with pytest.raises(SgidError, match="fewer than --shots 9"):
        k_shot(real, 9, seed=0)


def test_fraction_takes_a_stratified_share() -> None:
    real = real_examples([40, 20, 3])
    assert _counts(list(fraction_subset(real, 0.1, seed=0))) == {0: 4, 1: 2, 2: 1}


def test_stratified_split_holds_out_a_share_of_every_class() -> None:
    kept, held = stratified_split(real_examples([10, 10, 1]), 0.2, seed=0)
    assert _counts(list(held)) == {0: 2, 1: 2} and _counts(list(kept)) == {0: 8, 1: 8, 2: 1}
    assert not {ex.key for ex in kept} & {ex.key for ex in held}


def test_generated_images_follow_their_sources_into_the_subset(real, generated) -> None:
    subset = k_shot(real, 2, seed=0)
    linked = linked_generated(generated, subset)
    assert {ex.source for ex in linked} == {ex.key for ex in subset}
    assert len(linked) == 2 * len(subset)
    sourceless = Example(key="t2i:c1/x.png", label=1, load=lambda: None, generated=True)  # type: ignore[arg-type]
    assert sourceless in linked_generated((*generated, sourceless), subset)
