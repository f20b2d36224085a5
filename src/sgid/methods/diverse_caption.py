"""SGID+DiverseCaption (the paper's generative baseline after Dunlap et al.'s ALIA).

img2img exactly as SGID, except that the caption comes from *other* images of the same label, so the prompt
describes a different scene. Optionally (``--summarize``, with ``--text-model``) a label's captions are first
summarised by a language model into a few domain descriptions, ALIA's idea, and those are used instead.
The borrowed caption's similarity to *this* image is computed before generation and feeds g = f(s).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field, replace

from sgid.errors import SgidError
from sgid.methods.base import METHODS, MethodContext, Prepared, Services, SkipItem, TextModelOptions
from sgid.methods.sgid import SgidMethod
from sgid.options import option
from sgid.sample import Caption, Sample
from sgid.seeding import derive_seed

SUMMARY_PROMPT = "Photos of a {label}: {captions}. In a few words, the setting of such a photo is"


@dataclass(frozen=True)
class DiverseCaptionOptions(TextModelOptions):
    summarize: bool = option(
        False, "diverse_caption: summarise each label's captions into domain descriptions with --text-model (ALIA)"
    )


@dataclass(frozen=True)
class CaptionPools(Prepared):
    """class folder -> the captions its images lend: (the lender's relative path, or "summary"; the text)."""

    pools: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


@METHODS.register("diverse_caption")
class DiverseCaptionMethod(SgidMethod):
    name = "diverse_caption"
    Options = DiverseCaptionOptions
    paper_variant = "summarised"
    stand_in_note = (
        "diverse_caption: captions are borrowed from other images of the label as they are (variant "
        "'borrowed'); the paper's SGID+DiverseCaption summarises them with a language model "
        "(--summarize --text-model MODEL for variant 'summarised')"
    )

    def needs_captions(self) -> bool:
        return True

    def needs_all_sources(self) -> bool:
        return True

    def needs_text_model(self) -> bool:
        return self.config.summarize

    def check(self) -> None:
        super().check()
        if self.config.summarize and self.config.text_model is None:
            raise SgidError("--summarize needs --text-model (the language model that writes the descriptions)")

    def variant(self) -> str:
        """``summarised``: each label's captions summarised by a language model (ALIA, the paper's
        SGID+DiverseCaption); ``borrowed``: other images' captions used as they are."""
        return "summarised" if self.config.summarize else "borrowed"

    def pool_for(self, info_captions: tuple[Caption, ...]) -> list[Caption]:
        """The captions one image lends to others: its c* for ``clip``, else its captions of that strategy."""
        if not info_captions:
            return []
        if self.config.caption == "clip":
            return [max(info_captions, key=lambda c: c.similarity or 0.0)]
        return [c for c in info_captions if c.strategy == self.config.caption]

    def prepare(self, context: MethodContext, services: Services) -> CaptionPools:
        pools: dict[str, list[tuple[str, str]]] = defaultdict(list)  # label -> [(lender relpath, text)]
        for source in context.sources:
            info = context.infos.get(source.relpath)
            if info is not None:
                pools[source.class_name] += [(source.relpath, c.text) for c in self.pool_for(info.captions)]
        if not self.config.summarize:
            return CaptionPools(pools=dict(pools))
        if services.text is None:  # checked with the options (check); a caller that skipped it gets this
            raise SgidError("--summarize needs --text-model MODEL")
        summaries: dict[str, list[tuple[str, str]]] = {}
        for class_name, pool in sorted(pools.items()):
            texts = "; ".join(dict.fromkeys(text for _, text in pool))[:1000]
            prompt = SUMMARY_PROMPT.format(label=context.labels[class_name], captions=texts)
            seed = derive_seed(self.config.seed, class_name, "summaries")
            found = [d for d in services.text.generate(prompt, self.config.sentences, seed) if d]
            summaries[class_name] = [("summary", d) for d in found]
        return CaptionPools(pools=summaries)

    def caption_for(self, sample: Sample, context: MethodContext) -> Caption | None:
        pool = [
            (lender, text)
            for lender, text in context.prepared_as(CaptionPools).pools.get(sample.source.class_name, [])
            if lender != sample.source.relpath
        ]
        if not pool:
            raise SkipItem(f"no other image of label {sample.source.class_name!r} to borrow a caption from")
        lender, text = pool[random.Random(self.caption_seed(sample)).randrange(len(pool))]
        return Caption(text, "summary" if lender == "summary" else self.config.caption, None, origin=lender)

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        planned = super().plan(sample, context)
        assert planned.caption is not None
        variant = "summarised" if planned.caption.origin == "summary" else "borrowed"
        return replace(planned, extra={"variant": variant, "caption_source": planned.caption.origin})
