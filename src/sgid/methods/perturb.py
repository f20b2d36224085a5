"""The perturbation baselines as methods: RandAugment, Random Erasing and CutMix materialised as images.

The paper compares SGID with them in table 2 (human study) and figure 3 (similarity to the original); as images
they can be rated, measured by ``sgid metrics`` and reviewed like any generated image. No model is loaded.
Each image's random choices come from its own seed and are recorded in the manifest (``perturbation_params``);
see :mod:`sgid.stages.perturb` for the implementations.

Applied always by default (``--perturb-probability 1``): an untouched copy of the original is no augmentation
to rate or measure. The paper trains with Random Erasing and CutMix at p=0.5; ``--perturb-probability 0.5``
materialises that distribution (the coin is seeded per item; unperturbed images say ``perturbation_applied:
false``). CutMix pastes a box of a partner image: another readable source (of any class, as in a shuffled
training batch), chosen by the item's seed; the manifest records it and λ, the image's share of the area.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from sgid.methods.base import METHODS, Method, MethodContext, SkipItem
from sgid.options import MethodOptions, option
from sgid.sample import Sample
from sgid.seeding import derive_seed


@dataclass(frozen=True)
class PerturbOptions(MethodOptions):
    perturb_probability: float = option(
        1.0,
        "randaugment, random_erasing, cutmix: chance each image is perturbed; the paper trains Random Erasing "
        "and CutMix at 0.5, unperturbed images are plain copies",
        at_least=0,
        at_most=1,
    )


class PerturbationMethod(Method):
    """One of :data:`~sgid.stages.perturb.IMAGE_PERTURBATIONS`, planned per (source, k)."""

    perturbation: ClassVar[str]  # the IMAGE_PERTURBATIONS key, also the generator kind
    uses_source_pixels = False  # the perturbation stage reads the source (and partner) at full size itself
    defaults = {"guidance": "1.0", "prompt_weighting": False}
    Options = PerturbOptions

    def needs_all_sources(self) -> bool:
        # CutMix partners are drawn from every readable source: all are read, so a resumed run plans the same
        from sgid.stages.perturb import IMAGE_PERTURBATIONS  # torch: imported when planning, not with the methods

        return IMAGE_PERTURBATIONS.get(self.perturbation).needs_partner

    def plan(self, sample: Sample, context: MethodContext) -> Sample:
        from sgid.evaluate.perturb import PERTURBATIONS as SETTINGS
        from sgid.stages.perturb import IMAGE_PERTURBATIONS

        c = self.config
        assert sample.info is not None
        applied = random.Random(derive_seed(sample.seed, "apply")).random() < c.perturb_probability
        settings = SETTINGS.get(self.perturbation)
        extra: dict[str, Any] = {
            "perturbation": self.perturbation,
            "perturbation_settings": {**settings.params, "citation": settings.citation},
            "perturbation_probability": c.perturb_probability,
            "perturbation_applied": applied,
        }
        perturbation = IMAGE_PERTURBATIONS.get(self.perturbation)()
        if perturbation.needs_partner:
            extra.update(self._partner(sample, context))
        extra["perturbation_params"] = perturbation.sample(sample.info.size, sample.seed) if applied else None
        return replace(sample, kind=self.perturbation, strength=None, guidance_scale=None, extra=extra)

    def _partner(self, sample: Sample, context: MethodContext) -> dict[str, Any]:
        candidates = [s for s in context.sources if s.relpath in context.infos and s.relpath != sample.source.relpath]
        if not candidates:
            raise SkipItem("CutMix needs a second readable image to take a box from; the input has one")
        partner = candidates[random.Random(derive_seed(sample.seed, "partner")).randrange(len(candidates))]
        return {
            "partner": partner.relpath,
            "partner_label": partner.class_name,
            "partner_sha256": context.infos[partner.relpath].sha256,
            "partner_file": str(partner.path),
        }

    def manifest_fields(self, sample: Sample) -> dict[str, Any]:
        return {k: v for k, v in sample.extra.items() if k != "partner_file"}


@METHODS.register("randaugment")
class RandAugmentMethod(PerturbationMethod):
    name = perturbation = "randaugment"
    generator_kinds = ("randaugment",)


@METHODS.register("random_erasing")
class RandomErasingMethod(PerturbationMethod):
    name = perturbation = "random_erasing"
    generator_kinds = ("random_erasing",)


@METHODS.register("cutmix")
class CutMixMethod(PerturbationMethod):
    name = perturbation = "cutmix"
    generator_kinds = ("cutmix",)
