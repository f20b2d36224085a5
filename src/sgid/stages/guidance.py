"""Guidance mapping (paper §3.2): the guidance scale g = f(s*) from the caption–image similarity s*.

The paper's mapping is f(s) = -4 s² + 2 s + 1 (its maximum, 1.25, is at s = 0.25). What it does depends on the
scale of s*:

* ``--similarity cosine`` (the default): CLIP ViT-B/32 image–caption cosines are typically 0.15–0.40, where
  f stays within about 1.16–1.25, so g barely varies from image to image.
* ``--similarity softmax``: s* is a probability among the image's candidate captions, anywhere in (0, 1]; f
  drops below 1 for s > 0.5 and below 0 for s > 0.809 (f(0.9) = -0.44).

The paper's own example, s* = 0.57 (figure 2), gives f = 0.84. A negative g would be applied by classifier-free
guidance, eps_u + g·(eps_c − eps_u), as a push *away* from the prompt; so the applied guidance is clamped at a
floor, ``max(f(s*), floor)`` with floor 0 by default (``--guidance-floor``; ``none`` applies f as it is). Both
the raw f(s*) (``guidance_raw``) and the applied g (``guidance_scale``) go into the manifest.

The guidance is always applied as classifier-free guidance for every g. Note that diffusers' Stable Diffusion
pipelines silently skip classifier-free guidance when g ≤ 1 (they use eps_c alone); ``diffusers_guidance=True``
reproduces that behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sgid.errors import SgidError

DEFAULT_FLOOR = 0.0
#: a similarity-mapped guidance spanning less than this over a run barely depends on the similarity
NARROW_SPAN = 0.1


@dataclass(frozen=True)
class GuidanceMap:
    """g = max(a·s² + b·s + c, floor) (the paper: a=-4, b=2, c=1), or a constant when ``constant`` is set.

    >>> PAPER_GUIDANCE.raw(0.9), PAPER_GUIDANCE(0.9)
    (-0.44000000000000017, 0.0)
    """

    a: float = -4.0
    b: float = 2.0
    c: float = 1.0
    constant: float | None = None
    floor: float | None = DEFAULT_FLOOR  # None: no clamping

    def raw(self, similarity: float | None) -> float:
        """f(s*) before clamping (the constant, for a constant map)."""
        if self.constant is not None:
            return float(self.constant)
        if similarity is None:
            raise ValueError("the similarity-based guidance map needs a similarity")
        s = float(similarity)
        return self.a * s * s + self.b * s + self.c

    def clamp(self, raw: float) -> float:
        """The applied g for a raw value: raised to the floor (a constant scale is applied as given)."""
        return raw if self.floor is None or self.constant is not None else max(raw, self.floor)

    def __call__(self, similarity: float | None) -> float:
        """The applied guidance scale."""
        return self.clamp(self.raw(similarity))

    @property
    def needs_similarity(self) -> bool:
        return self.constant is None

    def describe(self) -> str:
        if self.constant is not None:
            return f"constant {self.constant:g}"
        floor = "" if self.floor is None else f", floored at {self.floor:g}"
        return f"f(s) = {self.a:g}*s^2 + {self.b:g}*s + {self.c:g}{floor}"


PAPER_GUIDANCE = GuidanceMap()


def parse_floor(value: str | float | None) -> float | None:
    """``--guidance-floor``: a number, or ``none`` for no clamping."""
    if value is None or isinstance(value, str) and value.strip().lower() == "none":
        return None
    try:
        floor = float(value)
    except ValueError:
        raise SgidError(f"invalid --guidance-floor {value!r}: use a number (default 0) or 'none'") from None
    if not math.isfinite(floor):
        raise SgidError(f"invalid --guidance-floor {value!r}: use a finite number, or 'none' for no floor")
    return floor


def parse_guidance(value: str | float, floor: float | None = DEFAULT_FLOOR) -> GuidanceMap:
    """``"paper"`` → the paper's quadratic (clamped at ``floor``); a number → that constant scale."""
    text = str(value).strip()
    if text == "paper":
        return PAPER_GUIDANCE if floor == DEFAULT_FLOOR else GuidanceMap(floor=floor)
    try:
        scale = float(value)
    except ValueError:
        raise SgidError(f"invalid --guidance {value!r}: use 'paper' (f(s) = -4s^2 + 2s + 1) or a number") from None
    if not math.isfinite(scale):
        raise SgidError(f"invalid --guidance {value!r}: use 'paper' or a finite number")
    if scale < 0:
        raise SgidError(f"--guidance must be >= 0, got {scale}")
    return GuidanceMap(constant=scale)


def range_note(used: Iterable[tuple[float, float]], floor: float | None) -> str:
    """One line on the guidance a run used, from its (raw f(s*), applied g) pairs.

    >>> range_note([(1.21, 1.21), (1.24, 1.24)], 0.0)  # doctest: +NORMALIZE_WHITESPACE
    'guidance g = f(s*) used: 1.210 to 1.240 over 2 images; it spans less than 0.1, so the similarity barely
    changes the guidance (see docs/augment.md, "Similarity and guidance")'
    """
    pairs = list(used)
    if not pairs:
        return "guidance g = f(s*): no image was generated"
    raw = [r for r, _ in pairs]
    applied = [a for _, a in pairs]
    line = f"guidance g = f(s*) used: {min(applied):.3f} to {max(applied):.3f} over {len(pairs)} images"
    clamped = sum(a != r for r, a in pairs)
    if clamped:
        line += f" ({clamped} clamped to the floor {floor:g}; lowest f(s*) {min(raw):.3f})"
    if max(applied) - min(applied) < NARROW_SPAN:
        line += (
            f"; it spans less than {NARROW_SPAN:g}, so the similarity barely changes the guidance "
            f'(see docs/augment.md, "Similarity and guidance")'
        )
    return line
