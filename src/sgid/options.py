"""The options of ``sgid augment``: one table, from which the Python keywords, their signature, the CLI flag
names and the old keyword names are all derived, so they cannot drift apart.

Every option is a field of :class:`~sgid.config.AugmentConfig` (or of its ``captions``,
:class:`~sgid.stages.caption.CaptionSettings`). Its Python keyword is its CLI flag with ``_`` for ``-``
(``--no-cache`` → ``no_cache``, ``--template`` → ``template``); where that differs from the field's name, the
field's name stays accepted as an alias (``caption_cache``, ``templates``, ``instructions``). Another settings
dataclass (e.g. one a method declares for its own options) joins the table through :func:`options_of`.

>>> [o.name for o in augment_options() if o.aliases]
['template', 'instruction', 'no_cache']
>>> resolve_options({"no_cache": True, "templates": ["a {label}"]})
{'caption_cache': False, 'templates': ['a {label}']}
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: field -> (keyword = CLI flag name, value -> field value), where the flag's name is not the field's
RENAMED: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "caption_cache": ("no_cache", lambda no_cache: not no_cache),
    "templates": ("template", None),
    "instructions": ("instruction", None),
}
#: AugmentConfig fields that are not options (positional arguments, or filled from others)
NOT_OPTIONS = ("input_dir", "out_dir", "captions", "preset")


@dataclass(frozen=True)
class Option:
    name: str  # the Python keyword, = the CLI flag with "_" for "-"
    field: str  # the settings field it sets
    annotation: str  # the field's type, for the signature
    aliases: tuple[str, ...] = ()  # older keyword names, still accepted
    convert: Callable[[Any], Any] | None = None  # keyword value -> field value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def options_of(settings: type, skip: Iterable[str] = ()) -> list[Option]:
    """The options a settings dataclass declares: one per field, renamed where its flag says so."""
    found = []
    for f in dataclasses.fields(settings):
        if f.name in skip:
            continue
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        annotation = annotation.replace("tuple[str, ...]", "str | Sequence[str]").replace("Path", "str | Path")
        if f.name in RENAMED:
            name, convert = RENAMED[f.name]
            annotation = "bool" if convert is not None else annotation
            found.append(Option(name, f.name, annotation, (f.name,), convert))
        else:
            found.append(Option(f.name, f.name, annotation))
    return found


@functools.cache
def augment_options() -> tuple[Option, ...]:
    from sgid.config import AugmentConfig
    from sgid.stages.caption import CaptionSettings

    return (*options_of(AugmentConfig, NOT_OPTIONS), *options_of(CaptionSettings))


def flag_of(field: str) -> str:
    """The CLI flag that sets a settings field: ``templates`` → ``--template``."""
    for option in augment_options():
        if option.field == field:
            return option.flag
    return "--" + field.replace("_", "-")


def resolve_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """Keywords (or their old names) → settings fields; an unknown keyword is a ``TypeError`` that suggests the
    closest ones, as Python does for a misspelt argument."""
    by_name: dict[str, Option] = {}
    for option in augment_options():
        by_name[option.name] = option
        by_name.update({alias: option for alias in option.aliases})
    fields: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in given.items():
        found = by_name.get(key)
        if found is None:
            close = difflib.get_close_matches(key, list(by_name), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise TypeError(f"augment() got an unexpected keyword argument {key!r}{hint}")
        option = found
        if value is None:  # not given: the method's, the preset's or the paper's value
            continue
        if option.field in fields:
            raise TypeError(f"augment() got both {origin[option.field]!r} and {key!r}, which set the same option")
        convert = option.convert if key == option.name else None  # an alias holds the field's own value
        fields[option.field] = convert(value) if convert is not None else value
        origin[option.field] = key
    return fields


def _optional(annotation: str) -> str:
    return annotation if annotation.endswith("None") else f"{annotation} | None"


def augment_signature() -> inspect.Signature:
    """``augment(input_dir, out_dir, *, preset=None, <every option>=None, print_summary=False, dry_run=False)``:
    ``None`` means "not given" (the method's or the preset's value, else the paper's default)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("input_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str | Path"),
        inspect.Parameter("out_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str | Path"),
        inspect.Parameter("preset", keyword, default=None, annotation="str | None"),
        *(
            inspect.Parameter(o.name, keyword, default=None, annotation=_optional(o.annotation))
            for o in augment_options()
        ),
        inspect.Parameter("print_summary", keyword, default=False, annotation="bool"),
        inspect.Parameter("dry_run", keyword, default=False, annotation="bool"),
    ]
    return inspect.Signature(parameters, return_annotation="RunSummary | DryRun")
