"""How real and generated images make one training set (``--mix``): pure, seeded functions.

``add``
    real + generated (expansion ×(1+k) for k images per original). With a proportion p, a seeded fraction p of
    each class's generated images is added (000 adds 25–100%); default: all of them.
``replace``
    round(p·n_c) real images of every class are replaced by generated ones and the size stays fixed (004:
    d_total = p·d_synthetic + (1−p)·d_original, split equally per class); p=0 is real only, p=1 all generated. A
    replaced image is replaced by one of its own generated images when it has one, otherwise by another unused
    generated image of its class.
``swap``
    every real image is drawn as usual, but each time it is drawn one of its generated images is used instead
    with probability p (fixed size; a fresh coin each draw, see :func:`draw`).
``balance``
    every class is topped up with its generated images to the size of the largest class.

A plan is a tuple of :class:`Slot`; a slot is one training item, with the alternatives ``swap`` may draw instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sgid.errors import SgidError
from sgid.evaluate.data import Example, by_class, round_half_up
from sgid.registry import Registry


@dataclass(frozen=True)
class Slot:
    example: Example
    alternatives: tuple[Example, ...] = ()  # swap: used instead of ``example`` with probability p


@dataclass(frozen=True)
class Plan:
    slots: tuple[Slot, ...]
    swap_probability: float = 0.0

    def examples(self) -> list[Example]:
        """The primary example of every slot (what is drawn when no swap happens)."""
        return [slot.example for slot in self.slots]

    def class_counts(self) -> dict[int, int]:
        counts: dict[int, int] = defaultdict(int)
        for slot in self.slots:
            counts[slot.example.label] += 1
        return dict(sorted(counts.items()))


MixFunction = Callable[[Sequence[Example], Sequence[Example], "float | None", int], Plan]
MIX_MODES: Registry[MixFunction] = Registry("mix mode")
#: Mix modes that need an explicit proportion, and those that take none.
NEEDS_PROPORTION = frozenset({"replace", "swap"})
NO_PROPORTION = frozenset({"balance"})


def augmentations_of(generated: Sequence[Example]) -> dict[str, list[Example]]:
    """Generated examples grouped by the key of their source image (sourceless ones are left out)."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in generated:
        if ex.source is not None:
            groups[ex.source].append(ex)
    return dict(groups)


def _sample(rng: np.random.Generator, items: Sequence[Example], size: int) -> list[Example]:
    return [items[i] for i in sorted(rng.choice(len(items), size=size, replace=False))]


@MIX_MODES.register("add")
def mix_add(real: Sequence[Example], generated: Sequence[Example], proportion: float | None, seed: int) -> Plan:
    rng = np.random.default_rng(seed)
    p = 1.0 if proportion is None else proportion
    added: list[Example] = []
    for group in by_class(generated).values():
        added.extend(_sample(rng, group, round_half_up(p * len(group))))
    return Plan(tuple(Slot(ex) for ex in (*real, *added)))


@MIX_MODES.register("replace")
def mix_replace(real: Sequence[Example], generated: Sequence[Example], proportion: float | None, seed: int) -> Plan:
    if proportion is None:
        raise SgidError("--mix replace needs --proportion P in [0, 1]")
    rng = np.random.default_rng(seed)
    own = augmentations_of(generated)
    pool_by_class = by_class(generated)
    kept: list[Example] = []
    replacements: list[Example] = []
    for label, group in by_class(real).items():
        count = round_half_up(proportion * len(group))
        dropped = _sample(rng, group, count)
        dropped_keys = {ex.key for ex in dropped}
        kept.extend(ex for ex in group if ex.key not in dropped_keys)
        used: set[str] = set()
        orphans = 0
        for ex in dropped:  # first pass: each replaced image by one of its own generated images
            options = [g for g in own.get(ex.key, []) if g.key not in used]
            if options:
                choice = options[int(rng.integers(len(options)))]
                used.add(choice.key)
                replacements.append(choice)
            else:
                orphans += 1
        pool = [g for g in pool_by_class.get(label, []) if g.key not in used]
        if orphans > len(pool):
            raise SgidError(
                f"--mix replace p={proportion:g}: class {label} needs {count} generated images but has "
                f"{count - orphans + len(pool)}; lower p or generate more (--multiplier)"
            )
        replacements.extend(_sample(rng, pool, orphans))
    return Plan(tuple(Slot(ex) for ex in (*kept, *replacements)))


@MIX_MODES.register("swap")
def mix_swap(real: Sequence[Example], generated: Sequence[Example], proportion: float | None, seed: int) -> Plan:
    del seed  # the coin is flipped per draw, see draw()
    if proportion is None:
        raise SgidError("--mix swap needs --proportion P in [0, 1]")
    own = augmentations_of(generated)
    if not any(ex.key in own for ex in real):
        raise SgidError("--mix swap needs generated images made from the training images (with a source)")
    return Plan(tuple(Slot(ex, tuple(own.get(ex.key, ()))) for ex in real), swap_probability=proportion)


@MIX_MODES.register("balance")
def mix_balance(real: Sequence[Example], generated: Sequence[Example], proportion: float | None, seed: int) -> Plan:
    if proportion is not None:
        raise SgidError("--mix balance takes no --proportion: it tops every class up to the largest")
    rng = np.random.default_rng(seed)
    classes = by_class(real)
    target = max(len(group) for group in classes.values())
    pools = by_class(generated)
    added: list[Example] = []
    for label, group in classes.items():
        missing = target - len(group)
        pool = pools.get(label, [])
        if missing > len(pool):
            raise SgidError(
                f"--mix balance: class {label} needs {missing} generated images to reach {target} but has {len(pool)}"
            )
        added.extend(_sample(rng, pool, missing))
    return Plan(tuple(Slot(ex) for ex in (*real, *added)))


def real_only(real: Sequence[Example]) -> Plan:
    return Plan(tuple(Slot(ex) for ex in real))


def make_plan(
    mode: str | None, real: Sequence[Example], generated: Sequence[Example], proportion: float | None, seed: int
) -> Plan:
    """The training plan: real only when ``mode`` is None, else mix ``real`` and ``generated`` by ``mode``."""
    if mode is None:
        return real_only(real)
    if not generated:
        raise SgidError("no generated image belongs to the training images (check --generated and the subset)")
    return MIX_MODES.get(mode)(real, generated, proportion, seed)


def draw(slot: Slot, probability: float, rng: np.random.Generator) -> Example:
    """What one draw of ``slot`` yields: with ``probability`` a uniformly chosen alternative (if any)."""
    if slot.alternatives and probability > 0 and rng.random() < probability:
        return slot.alternatives[int(rng.integers(len(slot.alternatives)))]
    return slot.example
