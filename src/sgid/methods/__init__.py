"""Augmentation methods, registered by name: the ``--method`` value is the registry key.

``a+b`` chains methods: ``b`` is applied to the outputs of ``a`` (e.g. ``text2img+sgid``, paper §4.3).
Each method declares its own options (``Method.Options``); :func:`method_options` gathers them for the command
line and the settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sgid.methods import boomerang as _boomerang  # noqa: F401  (each import registers its method)
from sgid.methods import diverse_caption as _diverse_caption  # noqa: F401
from sgid.methods import instruct as _instruct  # noqa: F401
from sgid.methods import perturb as _perturb  # noqa: F401
from sgid.methods import retrieval as _retrieval  # noqa: F401
from sgid.methods import sgid as _sgid  # noqa: F401
from sgid.methods import text2img as _text2img  # noqa: F401
from sgid.methods.base import METHODS, Method, MethodContext, Prepared, Services, SkipItem

if TYPE_CHECKING:
    from sgid.config import AugmentConfig

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "Prepared",
    "Services",
    "SkipItem",
    "chain_parts",
    "denoising_warning",
    "ignored_options",
    "method_options",
    "option_warnings",
]


def chain_parts(method: str) -> list[str]:
    """``"text2img+sgid"`` -> ``["text2img", "sgid"]``, each checked against the registry."""
    parts = [p.strip() for p in method.split("+")]
    for part in parts:
        METHODS.get(part)
    return parts


def method_options() -> list[dataclasses.Field]:
    """Every registered method's own options, in registry order, each once: an option several methods share
    (``--text-model``) is one declaration they inherit, never two."""
    found: dict[str, dataclasses.Field] = {}
    for name in METHODS.names():
        for option in dataclasses.fields(METHODS.get(name).Options):
            if found.setdefault(option.name, option) is not option:
                raise TypeError(f"option {option.name!r} is declared twice (method {name}): declare it once, share it")
    return list(found.values())


#: settings only methods with captions read (the caption settings' own fields join them)
CAPTION_OPTIONS = ("captioner", "caption", "similarity", "caption_batch_size", "caption_cache")


def ignored_options(config: AugmentConfig, given: Iterable[str]) -> dict[str, list[str]]:
    """The given settings that no method of the run reads (``--pool`` with ``sgid``, ``--instruction`` with
    ``text2img``), each with the methods that do read it. ``given``: the settings fields the user set explicitly."""
    from sgid.config import CaptionSettings

    run = [METHODS.get(part)(config) for part in chain_parts(config.method)]
    every = {name: METHODS.get(name)(config) for name in METHODS.names()}
    captions = {*CAPTION_OPTIONS, *(f.name for f in dataclasses.fields(CaptionSettings))}
    ignored: dict[str, list[str]] = {}
    for field in given:
        if field in captions:
            used_by = [name for name, m in every.items() if m.needs_captions()]
            applies = any(m.needs_captions() for m in run)
        elif any(field in m.options for m in every.values()):
            used_by = [name for name, m in every.items() if field in m.options]
            applies = any(field in m.options for m in run)
        else:
            continue
        if not applies:
            ignored[field] = used_by
    return ignored


def option_warnings(config: AugmentConfig, given: Iterable[str]) -> list[str]:
    """One line per given setting that no method of the run reads, naming the methods that do."""
    from sgid.options import flag_of

    return [
        f"{flag_of(field)} does not apply to --method {config.method} (only to {', '.join(used_by)}); it is ignored"
        for field, used_by in ignored_options(config, given).items()
    ]


def denoising_warning(config: AugmentConfig) -> str | None:
    """``steps × noise < 1``: img2img would run no denoising step and hand every image back unchanged."""
    uses_noise = any("noise" in METHODS.get(part).options for part in chain_parts(config.method))
    if not uses_noise or int(config.steps * config.noise) >= 1 or config.noise == 0:
        return None
    return (
        f"--steps {config.steps} x --noise {config.noise:g} = {config.steps * config.noise:g} denoising steps: "
        f"img2img runs int(steps x noise) = 0 steps, so every image comes back unchanged; raise --steps or --noise"
    )
