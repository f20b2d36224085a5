"""Method names (``baseline``, ``randaugment``, ``sgid+randaugment`` …) and the variants a sweep runs.

A method is ``baseline`` or a ``+``-joined set of components: at most one *generated set* (train on real and
generated images, mixed by ``--mix``) and the perturbations of :mod:`sgid.evaluate.perturb`. A generated set is
named by ``--generated NAME=DIR`` (``sgid=runs/sgid``); a bare ``--generated DIR`` is the set ``generated``.
Perturbations apply to every training image, generated ones included, so ``sgid+randaugment`` is RandAugment on
top of SGID's images (paper §4.3, appendix A). A *variant* is a method with its mixing mode and proportion: a sweep
over ``--proportion`` runs one variant per value for every method that uses generated images.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sgid.errors import SgidError
from sgid.registry import closest

BASELINE = "baseline"
GENERATED = "generated"  # the name of the images of a bare --generated DIR
RESERVED = (BASELINE, "zero_shot_clip")
GENERATED_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Method:
    name: str  # as the user wrote it: "sgid+randaugment"
    source: str | None  # the generated set it trains on ("generated", "sgid", …); None: real images only
    perturbations: tuple[str, ...]  # in the order given

    @property
    def generated(self) -> bool:
        return self.source is not None


def check_generated_name(name: str, perturbations: Iterable[str]) -> str:
    """A generated set's name is a method component: letters, digits, ``_ . -``, and no other method's name."""
    if not GENERATED_NAME.match(name):
        raise SgidError(
            f"--generated name {name!r} must start with a letter and hold only letters, digits, '_', '.' or '-' "
            f"(it is a method name, e.g. --generated sgid=runs/sgid)"
        )
    if name in (*RESERVED, *perturbations):
        raise SgidError(f"--generated name {name!r} is already a method; choose another (e.g. {name}_images)")
    return name


def _unknown(part: str, text: str, valid: Sequence[str]) -> SgidError:
    close = closest(part, valid)
    hint = f" (did you mean {close!r}?)" if close else ""
    return SgidError(
        f"unknown method component {part!r} in {text!r}{hint}; choose from: {', '.join(valid)} "
        f"(combine with '+', e.g. generated+randaugment)"
    )


def parse_method(name: str, perturbations: Iterable[str], generated: Iterable[str] = (GENERATED,)) -> Method:
    """``"sgid+randaugment"`` → Method(source="sgid", perturbations=("randaugment",)), given the generated sets'
    names (``generated``; ``generated`` itself is always a valid name)."""
    known = list(perturbations)
    sets = list(dict.fromkeys([GENERATED, *generated]))
    text = name.strip()
    if text == BASELINE:
        return Method(BASELINE, None, ())
    parts = [part.strip() for part in text.split("+")]
    valid = [BASELINE, *sets, *known]
    for part in parts:
        if part == BASELINE:
            raise SgidError(f"method {text!r}: 'baseline' cannot be combined with anything")
        if part not in (*sets, *known):
            raise _unknown(part, text, valid)
    if len(set(parts)) != len(parts):
        raise SgidError(f"method {text!r} names a component twice")
    sources = [p for p in parts if p in sets]
    if len(sources) > 1:
        raise SgidError(
            f"method {text!r} combines two generated sets ({', '.join(sources)}); give each its own method, or "
            f"pass both folders under one name (--generated both=DIR_A --generated both=DIR_B)"
        )
    return Method(text, sources[0] if sources else None, tuple(p for p in parts if p not in sets))


def parse_methods(
    text: str | Sequence[str], perturbations: Iterable[str], generated: Iterable[str] = (GENERATED,)
) -> tuple[Method, ...]:
    """A comma-separated list (or sequence) of methods; ``baseline`` is always included, first."""
    names = [n for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise SgidError("--methods is empty; e.g. --methods baseline,randaugment,generated")
    known = list(perturbations)
    sets = list(generated)
    methods = [parse_method(n, known, sets) for n in names]
    if len({m.name for m in methods}) != len(methods):
        raise SgidError(f"--methods lists a method twice: {','.join(m.name for m in methods)}")
    if all(m.name != BASELINE for m in methods):
        methods.insert(0, Method(BASELINE, None, ()))  # every verdict is relative to the baseline
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
