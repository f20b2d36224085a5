"""SGID+InstructPix2Pix (the paper's generative baseline after Dunlap et al.): edit the image by instruction.

``StableDiffusionInstructPix2PixPipeline`` (default ``timbrooks/instruct-pix2pix``) with an edit instruction
per augmentation, drawn (seeded) from ``--instruction`` values, from the built-in list, or — with
``--text-model`` and no instructions given — written by a local language model per label. The text and
image guidance scales are recorded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from sgid.methods.base import METHODS, LabelTexts, Method, MethodContext, Services, TextModelOptions
from sgid.options import option
from sgid.sample import Sample
from sgid.seeding import derive_seed
from sgid.stages.prompt import Prompt

INSTRUCTIONS = (
    "make it snowy",
    "put it at night",
    "place it in a forest",
    "make it rainy",
    "put it in a desert",
    "make it sunset",
    "place it on a beach",
    "make it foggy",
)
INSTRUCTION_PROMPT = "Write a short instruction to change the surroundings of a photo of a {label}:"


@dataclass(frozen=True)
class InstructOptions(TextModelOptions):
    instructions: tuple[str, ...] = option((), "instruct_pix2pix edit instruction (repeatable)", shown="built-in list")
    image_guidance: float = option(1.5, "instruct_pix2pix image guidance", at_least=0)
    instruct_model: str | None = option(None, "InstructPix2Pix model", shown="the preset's")


@METHODS.register("instruct_pix2pix")
class InstructPix2PixMethod(Method):
    name = "instruct_pix2pix"
    generator_kinds = ("instruct",)
    defaults = {"guidance": "7.5", "prompt_weighting": False}
    Options = InstructOptions

    def needs_text_model(self) -> bool:
        return self.config.text_model is not None and not self.config.instructions

    def variant(self) -> str:
        """Where instructions come from: ``given`` (--instruction), ``lm`` (--text-model) or ``built_in``."""
        return "given" if self.config.instructions else "lm" if self.config.text_model else "built_in"

    def prepare(self, context: MethodContext, services: Services) -> LabelTexts:
        if services.text is None:
            return LabelTexts()
        found = {}
        for class_name in sorted({s.class_name for s in context.sources}):
            prompt = INSTRUCTION_PROMPT.format(label=context.labels[class_name])
            seed = derive_seed(self.config.seed, class_name, "instructions")
            found[class_name] = [t for t in services.text.generate(prompt, self.config.sentences, seed) if t]
        return LabelTexts(texts=found)

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        c = self.config
        generated = context.prepared_as(LabelTexts).texts.get(sample.source.class_name)
        pool = list(c.instructions) or generated or list(INSTRUCTIONS)
        seed = derive_seed(c.seed, sample.source.relpath, sample.k, "instruction")
        text = pool[random.Random(seed).randrange(len(pool))]
        raw, g = self.guidance(None)
        source = "given" if c.instructions else "language_model" if generated else "built_in"
        variant = {"language_model": "lm"}.get(source, source)
        return replace(
            sample,
            prompt=Prompt(text, (0, 0), (0, 0)),
            negative_prompt=c.negative_prompt,
            guidance_raw=raw,
            guidance_scale=g,
            kind="instruct",
            strength=None,
            extra={
                "variant": variant,
                "instruction": text,
                "instruction_source": source,
                "text_guidance_scale": g,
                "image_guidance_scale": c.image_guidance,
            },
        )
