"""The record that flows through the stages.

One :class:`Sample` per augmented image to make (a source image and its index k). Stages fill fields in order
(read → caption → score → prompt → generate → write) with :func:`dataclasses.replace`; a stage reads only
fields that earlier stages set. Pixels are not carried: they are read when needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgid.dataset import Source
from sgid.stages.prompt import Prompt

#: The kind of an item that copies an existing image (retrieval) instead of generating one.
COPY = "copy"


@dataclass(frozen=True)
class Caption:
    """One candidate caption of an image (:mod:`sgid.stages.caption`) and its CLIP similarity to it."""

    text: str
    strategy: str  # "beam" or "nucleus" ("summary" for a language model's domain description)
    similarity: float | None = None
    origin: str | None = None  # where a borrowed caption came from (another image's path, or "summary")


@dataclass(frozen=True)
class SourceInfo:
    """What reading and captioning learned about one source image."""

    sha256: str
    size: tuple[int, int]  # (width, height), EXIF rotation applied
    captions: tuple[Caption, ...] = ()  # every candidate caption, with its similarity


@dataclass(frozen=True)
class Sample:
    source: Source
    k: int
    seed: int  # the generation seed (noise, VAE sampling, scheduler)
    info: SourceInfo | None = None  # None for methods that use no source image
    # prompt stage
    caption: Caption | None = None
    prompt: Prompt | None = None
    negative_prompt: str = ""
    label_weight: float = 1.0
    caption_weight: float = 1.0
    guidance_scale: float | None = None  # the applied g; None until a borrowed caption is scored (Method.finalize)
    guidance_raw: float | None = None  # f(s*) before the floor (equal to guidance_scale unless clamped)
    # generation
    kind: str = "img2img"  # which generator: img2img, text2img, instruct; or COPY
    strength: float | None = None  # the noise rate n (img2img)
    copy_from: Path | None = None  # COPY items: the image this item is a copy of
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific manifest fields

    @property
    def similarity(self) -> float | None:
        return None if self.caption is None else self.caption.similarity
