"""Boomerang (Luzi et al.; ``seeds/001``): img2img with a low noise rate and an empty or label-only prompt.

Local sampling on the image manifold: the image is noised a little and denoised back. No captions. With the
empty prompt the guidance scale has no effect (the conditional and unconditional predictions coincide).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sgid.methods.base import METHODS, Method, MethodContext
from sgid.options import MethodOptions, option
from sgid.sample import Sample
from sgid.stages.prompt import build_prompt


@dataclass(frozen=True)
class BoomerangOptions(MethodOptions):
    boomerang_prompt: str = option("empty", "boomerang prompt: empty or label", choices=("empty", "label"))


@METHODS.register("boomerang")
class BoomerangMethod(Method):
    name = "boomerang"
    defaults = {"noise": 0.2, "guidance": "1.0", "prompt_weighting": False}
    Options = BoomerangOptions
    reads = ("noise",)

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        c = self.config
        mode = "label" if c.boomerang_prompt == "label" else "none"
        label = context.prompt_labels[sample.source.class_name]
        raw, applied = self.guidance(None)
        return replace(
            sample,
            prompt=build_prompt(label, None, mode, c.label_template),
            negative_prompt=c.negative_prompt,
            guidance_raw=raw,
            guidance_scale=applied,
            kind="img2img",
            strength=c.noise,
            extra={"boomerang_prompt": c.boomerang_prompt},
        )
