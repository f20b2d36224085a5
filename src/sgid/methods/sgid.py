"""SGID (Li et al., AAAI 2024): label + caption prompt, prompt weighting, similarity-mapped guidance, img2img."""

from __future__ import annotations

import random

from sgid.methods.base import METHODS, Method, MethodContext
from sgid.sample import Caption, Sample
from sgid.seeding import derive_seed
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
    reads = ("noise", "prompt")

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
        # a caption borrowed from elsewhere has no similarity yet: it is scored, then ``finalize`` sets g
        unscored = caption is not None and caption.similarity is None
        guidance: tuple[float | None, float | None] = (None, None)
        if not unscored:
            guidance = self.guidance(caption.similarity if caption else None)
        return self.prompted(sample, prompt, guidance, "img2img", caption=caption, strength=c.noise)
