"""Guidance mapping (paper §3.2): the guidance scale g = f(s*) from the caption–image similarity s*.

The paper's mapping is f(s) = -4 s² + 2 s + 1. For typical CLIP cosine similarities (0.2–0.4) it gives
g ≈ 1.2–1.24, and for s* = 0.57 (the paper's figure 2) g ≈ 0.84, i.e. often at or below 1. The guidance is
always applied as classifier-free guidance, eps_u + g·(eps_c − eps_u), for every g. Note that diffusers'
Stable Diffusion pipelines silently skip classifier-free guidance when g ≤ 1 (they use eps_c alone);
``diffusers_guidance=True`` reproduces that behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from sgid.errors import SgidError


@dataclass(frozen=True)
class GuidanceMap:
    """g = a·s² + b·s + c (the paper: a=-4, b=2, c=1), or a constant when ``constant`` is set."""

    a: float = -4.0
    b: float = 2.0
    c: float = 1.0
    constant: float | None = None

    def __call__(self, similarity: float | None) -> float:
        if self.constant is not None:
            return float(self.constant)
        if similarity is None:
            raise ValueError("the similarity-based guidance map needs a similarity")
        s = float(similarity)
        return self.a * s * s + self.b * s + self.c

    @property
    def needs_similarity(self) -> bool:
        return self.constant is None

    def describe(self) -> str:
        if self.constant is not None:
            return f"constant {self.constant:g}"
        return f"f(s) = {self.a:g}*s^2 + {self.b:g}*s + {self.c:g}"


PAPER_GUIDANCE = GuidanceMap()


def parse_guidance(value: str | float) -> GuidanceMap:
    """``"paper"`` → the paper's quadratic; a number → that constant scale."""
    if isinstance(value, (int, float)):
        return GuidanceMap(constant=float(value))
    text = str(value).strip()
    if text == "paper":
        return PAPER_GUIDANCE
    try:
        scale = float(text)
    except ValueError:
        raise SgidError(f"invalid --guidance {value!r}: use 'paper' (f(s) = -4s^2 + 2s + 1) or a number") from None
    if scale < 0:
        raise SgidError(f"--guidance must be >= 0, got {scale}")
    return GuidanceMap(constant=scale)
