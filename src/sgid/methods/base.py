"""What a method decides: which captions it needs and, for each sample, prompt, guidance and generator.

A method is planned in three steps, all before any generation:

1. ``prepare(context, services)`` once per run, for what needs the whole dataset (sentences per label,
   caption pools, retrieval assignments), returned as the method's own :class:`Prepared` dataclass;
2. ``plan(sample, context)`` per (source, k): caption, prompt, weights, guidance, generator kind, strength —
   or :class:`SkipItem` with a reason that goes to errors.jsonl;
3. ``finalize(sample, similarity)`` for samples whose caption was chosen from elsewhere and scored afterwards.

A method's own settings are a dataclass of :func:`sgid.options.option` fields (``Options``): the flags of
``sgid augment`` and the defaults of :class:`~sgid.config.AugmentConfig` are made from it. Modules here stay
plain Python (no torch), because the settings and the command line import them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sgid.errors import SgidError
from sgid.options import MethodOptions, option
from sgid.registry import Registry

if TYPE_CHECKING:
    from sgid.config import AugmentConfig
    from sgid.dataset import Source
    from sgid.sample import Sample, SourceInfo
    from sgid.stages.prompt import Prompt


class SkipItem(Exception):
    """This (source, k) cannot be made by the method; the message is recorded in errors.jsonl."""


@dataclass(frozen=True)
class NoOptions(MethodOptions):
    """The options of a method that has none of its own."""


@dataclass(frozen=True)
class TextModelOptions(MethodOptions):
    """The local language model some methods write text with (sentences, summaries, instructions)."""

    text_model: str | None = option(
        None,
        "local causal language model (hub id or folder; tiny:lm for tests) for text2img sentences, --summarize and "
        "instructions",
    )
    sentences: int = option(10, "sentences/descriptions/instructions per label from the text model", at_least=1)


@dataclass(frozen=True)
class Prepared:
    """What a method's ``prepare`` computed over the whole dataset; a method that computes something subclasses
    it with fields of its own (every field with a default: the empty value when nothing was prepared)."""

    notes: tuple[dict[str, Any], ...] = ()  # inputs set aside while preparing, one errors.jsonl row each


@dataclass(frozen=True)
class LabelTexts(Prepared):
    """class folder -> what the language model wrote for its label (sentences, instructions; none without
    --text-model)."""

    texts: dict[str, list[str]] = field(default_factory=dict)


P = TypeVar("P", bound=Prepared)


@dataclass(frozen=True)
class MethodContext:
    """Everything a method may read when planning: the run's settings and what reading/captioning found."""

    config: AugmentConfig
    sources: tuple[Source, ...]
    infos: dict[str, SourceInfo]  # relpath -> info, for every readable source
    labels: dict[str, str]  # class folder -> label text (for CLIP queries and language-model prompts)
    prompt_labels: dict[str, str]  # class folder -> what Stable Diffusion prompts say: a learned token or the text
    prepared: Prepared = field(default_factory=Prepared)  # what ``prepare`` computed

    def prepared_as(self, kind: type[P]) -> P:
        """What ``prepare`` computed, as the method's own type; empty when it did not run (a hand-made context)."""
        return self.prepared if isinstance(self.prepared, kind) else kind()


@dataclass
class Services:
    """Models a method may use while preparing (loaded only when the method asks for them)."""

    text: Any = None  # sgid.stages.text.TextGenerator
    scorer: Any = None  # sgid.stages.score.ClipScorer
    scorer_id: str | None = None
    cache_dir: Path | None = None


class Method:
    """Base class. ``plan`` fills a sample's prompt-stage and generation fields."""

    name = "method"
    #: whether generation reads the source image's pixels (False: text2img, retrieval)
    uses_source_pixels = True
    #: generator kinds this method needs loaded (see ``sgid.stages.generate.GENERATORS``)
    generator_kinds: tuple[str, ...] = ("img2img",)
    #: settings this method changes from the global defaults (a preset or explicit flag still wins)
    defaults: dict[str, Any] = {}
    #: the method's own options (flags): a dataclass of :func:`sgid.options.option` fields
    Options: ClassVar[type[MethodOptions]] = NoOptions
    #: general settings this method reads that other methods ignore (``noise``, ``prompt``)
    reads: ClassVar[tuple[str, ...]] = ()
    #: the variant the paper describes, where the method has a stand-in (see ``variant``), and the line that says
    #: a run uses the stand-in
    paper_variant: ClassVar[str | None] = None
    stand_in_note: ClassVar[str] = ""
    #: save at the source image's size (False: keep the produced image's own size, e.g. retrieved photos)
    resize_to_source = True
    #: whether ``--prompt`` (complete / label / caption / none) shapes this method's prompts
    uses_prompt_mode = False
    #: settings (AugmentConfig fields) that only some methods read, and this one does: ``reads`` and the fields of
    #: ``Options``; a flag setting one that no method of the run reads gets a warning (the caption settings follow
    #: ``needs_captions`` instead)
    options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "options" not in cls.__dict__:
            cls.options = (*cls.reads, *(f.name for f in dataclasses.fields(cls.Options)))

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def check(self) -> None:
        """Refuse settings this method cannot use (called when the config is built, before any model loads)."""
        if not self.needs_captions() and self.config.guidance_map.needs_similarity:
            raise SgidError(
                f"--method {self.name} uses no captions, so --guidance 'paper' (f of a caption similarity) "
                f"cannot apply; give a constant --guidance"
            )

    def generator_kind(self, source: Source) -> str:
        """The generator kind ``plan`` will choose for ``source``'s items; known before planning, because
        batches (one kind and size each) are laid out before captions exist. Override along with ``plan``."""
        return self.generator_kinds[0]

    def variant(self) -> str | None:
        """Which reading of the method this run is, when the method has a stand-in for a part the paper gets
        from a model sgid may not have (e.g. ``templates`` vs ``lm`` sentences); recorded in run.json."""
        return None

    def variant_note(self) -> str | None:
        """One line to print when the run uses a stand-in rather than the paper's version of the method."""
        if self.paper_variant is None or self.variant() == self.paper_variant:
            return None
        return self.stand_in_note

    def needs_captions(self) -> bool:
        return False

    def needs_all_sources(self) -> bool:
        """True when planning one image looks at other images (their captions, their features), so every
        source is read (and captioned) even when its own augmentations are done: plans then never depend on
        what an interrupted run had finished."""
        return False

    def needs_text_model(self) -> bool:
        return False

    def needs_scorer(self) -> bool:
        return False

    def prepare(self, context: MethodContext, services: Services) -> Prepared:
        return Prepared()

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        raise NotImplementedError

    def guidance(self, similarity: float | None) -> tuple[float, float]:
        """(raw f(s*), applied g): the guidance for ``similarity`` before and after the floor."""
        guidance_map = self.config.guidance_map
        raw = guidance_map.raw(similarity)
        return raw, guidance_map.clamp(raw)

    def prompted(
        self, sample: Sample, prompt: Prompt, guidance: tuple[float | None, float | None], kind: str, **changes: Any
    ) -> Sample:
        """``sample`` with ``prompt`` weighted by the run's (w_l, w_c), the run's negative prompt, the guidance
        (raw f(s*), applied g) and the generator kind."""
        label_weight, caption_weight = self.config.weights
        return replace(
            sample,
            prompt=prompt,
            negative_prompt=self.config.negative_prompt,
            label_weight=label_weight,
            caption_weight=caption_weight,
            guidance_raw=guidance[0],
            guidance_scale=guidance[1],
            kind=kind,
            **changes,
        )

    def finalize(self, sample: Sample, similarity: float) -> Sample:
        """Set the similarity of a caption scored after planning, and the guidance that depends on it."""
        assert sample.caption is not None
        raw, applied = self.guidance(similarity)
        caption = replace(sample.caption, similarity=similarity)
        return replace(sample, caption=caption, guidance_raw=raw, guidance_scale=applied)

    def manifest_fields(self, sample: Sample) -> dict[str, Any]:
        return dict(sample.extra)


METHODS: Registry[type[Method]] = Registry("method")
