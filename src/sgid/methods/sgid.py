"""SGID (Li et al., AAAI 2024): label + caption prompt, prompt weighting, similarity-mapped guidance, img2img."""

from __future__ import annotations

import random
from dataclasses import replace

from sgid.methods.base import METHODS, Method, MethodContext
from sgid.sample import Sample
from sgid.seeding import derive_seed
from sgid.stages.caption import Caption
from sgid.stages.prompt import build_prompt


def choose_caption(captions: tuple[Caption, ...], strategy: str, seed: int) -> Caption:
    """``clip``: the most similar of all candidates (first on ties); ``beam``/``nucleus``: a seeded random pick."""
    if strategy == "clip":
        best = max(range(len(captions)), key=lambda i: (captions[i].similarity or 0.0, -i))
        return captions[best]
    pool = [c for c in captions if c.strategy == strategy]
    if not pool:
        raise ValueError(f"no {strategy} captions to choose from")
    return pool[random.Random(seed).randrange(len(pool))]


@METHODS.register("sgid")
class SgidMethod(Method):
    name = "sgid"
    uses_prompt_mode = True
    options: tuple[str, ...] = ("noise", "prompt")

    def needs_captions(self) -> bool:
        c = self.config
        return c.prompt in ("complete", "caption") or c.guidance_map.needs_similarity

    def caption_seed(self, sample: Sample) -> int:
        return derive_seed(self.config.seed, sample.source.relpath, sample.k, "caption")

    def caption_for(self, sample: Sample, context: MethodContext) -> Caption | None:
        """c*: one of the image's own captions."""
        assert sample.info is not None
        if not sample.info.captions:
            return None
        return choose_caption(sample.info.captions, self.config.caption, self.caption_seed(sample))

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        c = self.config
        caption = self.caption_for(sample, context)
        label = context.prompt_labels[sample.source.class_name]
        prompt = build_prompt(label, caption.text if caption else None, c.prompt, c.label_template)
        label_weight, caption_weight = c.weights
        # a caption borrowed from elsewhere has no similarity yet: it is scored, then ``finalize`` sets g
        unscored = caption is not None and caption.similarity is None
        raw, applied = (None, None) if unscored else self.guidance(caption.similarity if caption else None)
        return replace(
            sample,
            caption=caption,
            prompt=prompt,
            negative_prompt=c.negative_prompt,
            label_weight=label_weight,
            caption_weight=caption_weight,
            guidance_raw=raw,
            guidance_scale=applied,
            kind="img2img",
            strength=c.noise,
        )
