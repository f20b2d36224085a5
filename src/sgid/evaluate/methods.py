"""Method names (``baseline``, ``randaugment``, ``generated+randaugment`` …) and the variants a sweep runs.

A method is ``baseline`` or a ``+``-joined set of components: ``generated`` (train on real and generated images,
mixed by ``--mix``) and the perturbations of :mod:`sgid.evaluate.perturb`. Perturbations apply to every training
image, generated ones included, so ``generated+randaugment`` is RandAugment on top of the generated images (paper
§4.3, appendix A). A *variant* is a method with its mixing mode and proportion: a sweep over ``--proportion``
runs one variant per value for every method that uses generated images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sgid.errors import SgidError

BASELINE = "baseline"
GENERATED = "generated"


@dataclass(frozen=True)
class Method:
    name: str  # as the user wrote it: "generated+randaugment"
    generated: bool
    perturbations: tuple[str, ...]  # in the order given


def parse_method(name: str, perturbations: Iterable[str]) -> Method:
    """``"generated+randaugment"`` → Method(generated=True, perturbations=("randaugment",))."""
    known = list(perturbations)
    text = name.strip()
    if text == BASELINE:
        return Method(BASELINE, False, ())
    parts = [part.strip() for part in text.split("+")]
    valid = [BASELINE, GENERATED, *known]
    for part in parts:
        if part == BASELINE:
            raise SgidError(f"method {text!r}: 'baseline' cannot be combined with anything")
        if part not in (GENERATED, *known):
            raise SgidError(
                f"unknown method component {part!r} in {text!r}; choose from: {', '.join(valid)} "
                f"(combine with '+', e.g. generated+randaugment)"
            )
    if len(set(parts)) != len(parts):
        raise SgidError(f"method {text!r} names a component twice")
    return Method(text, GENERATED in parts, tuple(p for p in parts if p != GENERATED))


def parse_methods(text: str | Sequence[str], perturbations: Iterable[str]) -> tuple[Method, ...]:
    """A comma-separated list (or sequence) of methods; ``baseline`` is always included, first."""
    names = [n for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise SgidError("--methods is empty; e.g. --methods baseline,randaugment,generated")
    known = list(perturbations)
    methods = [parse_method(n, known) for n in names]
    if len({m.name for m in methods}) != len(methods):
        raise SgidError(f"--methods lists a method twice: {','.join(m.name for m in methods)}")
    if all(m.name != BASELINE for m in methods):
        methods.insert(0, Method(BASELINE, False, ()))  # every verdict is relative to the baseline
    methods.sort(key=lambda m: m.name != BASELINE)
    return tuple(methods)


@dataclass(frozen=True)
class Variant:
    """One row of the results: a method, and for methods with generated images its mix and proportion."""

    method: Method
    mix: str | None = None
    proportion: float | None = None

    @property
    def slug(self) -> str:
        """A folder-safe name: ``generated+randaugment@replace-p0.5``."""
        if self.mix is None:
            return self.method.name
        return f"{self.method.name}@{self.mix}" + ("" if self.proportion is None else f"-p{self.proportion:g}")

    @property
    def label(self) -> str:
        """The row label: ``generated+randaugment [replace p=0.5]``."""
        if self.mix is None:
            return self.method.name
        return f"{self.method.name} [{self.mix}" + ("" if self.proportion is None else f" p={self.proportion:g}") + "]"


def variants(methods: Sequence[Method], mix: str, proportions: Sequence[float]) -> tuple[Variant, ...]:
    """Every method; those with generated images once per proportion (or once if there is none)."""
    out: list[Variant] = []
    for method in methods:
        if not method.generated:
            out.append(Variant(method))
        else:
            out.extend(Variant(method, mix, p) for p in (proportions or [None]))  # type: ignore[list-item]
    return tuple(out)
