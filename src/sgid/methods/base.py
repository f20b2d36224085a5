"""What a method decides: which captions it needs and, for each sample, prompt, guidance and generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sgid.registry import Registry

if TYPE_CHECKING:
    from sgid.config import AugmentConfig
    from sgid.sample import Sample, SourceInfo


@dataclass(frozen=True)
class MethodContext:
    """Everything a method may read when planning: the run's settings and what reading/captioning found."""

    config: AugmentConfig
    infos: dict[str, SourceInfo]  # relpath -> info, for every readable source
    labels: dict[str, str]  # class folder -> label text


class Method:
    """Base class. ``plan`` fills a sample's prompt-stage and generation fields."""

    name = "method"
    uses_source_pixels = True

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def needs_captions(self) -> bool:
        return False

    def needs_all_captions(self) -> bool:
        """True when planning one image reads other images' captions (so every source is captioned)."""
        return False

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        raise NotImplementedError

    def manifest_fields(self, sample: Sample) -> dict[str, Any]:
        return dict(sample.extra)


METHODS: Registry[type[Method]] = Registry("method")
