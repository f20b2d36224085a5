"""Text2Img (He et al. 2022; the paper's generative baseline): Stable Diffusion text-to-image from the label.

No source pixels are used: each augmentation of an image is a new image of its label, generated from a
sentence. Sentences come from templates ("a photo of a {label}", "a HQ image of the {label}", ...; ``seeds/001``)
or, with ``--text-model``, from a local language model prompted with "Describe what a {label} looks like:" and
the other prompts of ``seeds/004`` ("language enhancement"); the label sentence is kept in front so the class is
always named.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sgid.methods.base import METHODS, LabelTexts, Method, MethodContext, Services, TextModelOptions
from sgid.options import option
from sgid.progress import note
from sgid.sample import Sample
from sgid.seeding import derive_seed
from sgid.stages.prompt import Prompt

TEMPLATES = (
    "a photo of a {label}",
    "a HQ image of the {label}",
    "a photo of the {label}",
    "a close-up photo of a {label}",
    "a bright photo of a {label}",
    "a cropped photo of the {label}",
    "a good photo of a {label}",
    "a photo of one {label}",
)
LANGUAGE_PROMPTS = (  # seeds/004, section 6.1
    "Describe what a {label} looks like:",
    "How can you identify a {label}?",
    "What does a {label} look like?",
    "Describe an image from the internet of a {label}:",
    "A caption of an image of a {label}:",
)


def sentences_from_model(text, label: str, n: int, seed: int) -> list[str]:
    """n descriptions of ``label`` written by the language model, spread over the prompts of seeds/004."""
    found: list[str] = []
    for p, prompt in enumerate(LANGUAGE_PROMPTS):
        count = len(range(p, n, len(LANGUAGE_PROMPTS)))
        if count:
            found += [t for t in text.generate(prompt.format(label=label), count, derive_seed(seed, p)) if t]
    return found


@dataclass(frozen=True)
class Text2ImgOptions(TextModelOptions):
    templates: tuple[str, ...] = option(
        (), "text2img sentence template with {label} (repeatable)", shown="built-in list"
    )


@METHODS.register("text2img")
class Text2ImgMethod(Method):
    name = "text2img"
    uses_source_pixels = False
    generator_kinds = ("text2img",)
    defaults = {"guidance": "7.5", "prompt_weighting": False}
    Options = Text2ImgOptions
    paper_variant = "lm"
    stand_in_note = (
        "text2img: no --text-model, so sentences come from templates (variant 'templates'); the paper's "
        "Text2Img writes them with a language model (pass --text-model for variant 'lm')"
    )

    def needs_text_model(self) -> bool:
        return self.config.text_model is not None

    def variant(self) -> str:
        """``lm``: sentences written by a language model (the paper's Text2Img, after He et al.); ``templates``."""
        return "lm" if self.config.text_model is not None else "templates"

    def templates(self) -> tuple[str, ...]:
        return self.config.templates or TEMPLATES

    def check(self) -> None:
        super().check()
        from sgid.errors import SgidError

        for template in self.templates():
            if "{label}" not in template:
                raise SgidError(f"--template {template!r} must contain {{label}}")

    def prepare(self, context: MethodContext, services: Services) -> LabelTexts:
        if services.text is None:
            return LabelTexts()
        sentences = {}
        for class_name in sorted({s.class_name for s in context.sources}):
            seed = derive_seed(self.config.seed, class_name, "sentences")
            sentences[class_name] = sentences_from_model(
                services.text, context.labels[class_name], self.config.sentences, seed
            )
        empty = [name for name, found in sentences.items() if not found]
        if empty:
            note(
                f"text2img: the language model wrote no sentence for {len(empty)} label(s) ({', '.join(empty[:5])}"
                f"{', …' if len(empty) > 5 else ''}); their images use templates (rows with variant 'templates')",
                self.config.quiet,
            )
        return LabelTexts(texts=sentences)

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        c = self.config
        label = context.prompt_labels[sample.source.class_name]
        generated = context.prepared_as(LabelTexts).texts.get(sample.source.class_name)
        # the label sentence stays in front of a model's description, so the class is always named
        pool = (
            [f"a photo of a {label}, {t}" for t in generated]
            if generated
            else [t.replace("{label}", label) for t in self.templates()]
        )
        text = pool[
            random.Random(derive_seed(c.seed, sample.source.relpath, sample.k, "sentence")).randrange(len(pool))
        ]
        return self.prompted(
            sample,
            Prompt(text, (0, len(text)), (0, 0)),  # the whole sentence counts as label guidance
            self.guidance(None),
            "text2img",
            strength=None,
            extra={
                "variant": "lm" if generated else "templates",
                "sentence_source": "language_model" if generated else "template",
                "uses_source_pixels": False,
            },
        )
