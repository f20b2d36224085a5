"""The options of ``sgid augment``: one table, from which the Python keywords, their signature, the CLI flag
names and the old keyword names are all derived, so they cannot drift apart.

A method's own options are declared once, in its module, as a dataclass of :func:`option` fields (default, help,
allowed values); ``sgid augment``'s flags (:func:`add_arguments`), their ``[default: …]`` help, the defaults of
the matching :class:`~sgid.config.AugmentConfig` fields and their one-line errors (:func:`check_fields`) all come
from that declaration.

Every option is a field of :class:`~sgid.config.AugmentConfig` (or of its ``captions``,
:class:`~sgid.config.CaptionSettings`). Its Python keyword is its CLI flag with ``_`` for ``-``
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sgid.errors import SgidError

#: field -> (keyword = CLI flag name, value -> field value), where the flag's name is not the field's
RENAMED: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "caption_cache": ("no_cache", lambda no_cache: not no_cache),
    "templates": ("template", None),
    "instructions": ("instruction", None),
}
#: AugmentConfig fields that are not options (positional arguments, or filled from others)
NOT_OPTIONS = ("input_dir", "out_dir", "captions", "preset")


@dataclass(frozen=True)
class OptionSpec:
    """What :func:`option` records about a settings field besides its default."""

    help: str  # the flag's help, without the default (added from the declaration)
    choices: tuple[str, ...] = ()  # the allowed values (checked, with "choose from" on a miss)
    at_least: float | None = None  # the allowed range of a number
    at_most: float | None = None
    shown: str | None = None  # the default as the help says it, where the value itself does not tell
    metavar: str | None = None

    def problem(self, flag: str, value: Any) -> str | None:
        """The one-line reason ``value`` is refused, or None."""
        if self.choices and value not in self.choices:
            return f"invalid {flag} {value!r}; choose from: {', '.join(self.choices)}"
        if self.at_least is None and self.at_most is None:
            return None
        # NaN compares false both ways, so it is outside every range
        inside = (self.at_least is None or value >= self.at_least) and (self.at_most is None or value <= self.at_most)
        if not inside:
            if self.at_most is None:
                return f"invalid {flag} {value!r}: must be >= {self.at_least:g}"
            return f"invalid {flag} {value!r}: must be in [{self.at_least:g}, {self.at_most:g}]"
        return None


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] = (),
    at_least: float | None = None,
    at_most: float | None = None,
    shown: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A settings field that is also an ``sgid augment`` option: its default, help text and allowed values in one
    place. The help gains ``[default: …]`` from ``default`` (or ``shown``; none for None, False or empty)."""
    spec = OptionSpec(help, tuple(choices), at_least, at_most, shown, metavar)
    return dataclasses.field(default=default, metadata={"option": spec})


def spec_of(field: dataclasses.Field) -> OptionSpec:
    spec = field.metadata.get("option")
    if not isinstance(spec, OptionSpec):
        raise TypeError(f"settings field {field.name!r} is not declared with sgid.options.option()")
    return spec


def check_fields(settings: Any, fields: Iterable[dataclasses.Field]) -> None:
    """Refuse, in one line naming the flag, the first of ``fields`` whose value in ``settings`` is not allowed."""
    for field in fields:
        problem = spec_of(field).problem(flag_of(field.name), getattr(settings, field.name))
        if problem:
            raise SgidError(problem)


@dataclass(frozen=True)
class MethodOptions:
    """Base of a method's own options (a frozen dataclass of :func:`option` fields): an instance checks itself."""

    def __post_init__(self) -> None:
        check_fields(self, dataclasses.fields(self))


def default_text(value: Any) -> str | None:
    """A default as a flag's help says it: None for "no default to state" (None, False, empty), a quoted string
    where it is empty or holds spaces.

    >>> [default_text(v) for v in (None, False, (), 0, 0.95, "clip", "", "A picture of a {label}")]
    [None, None, None, '0', '0.95', 'clip', "''", "'A picture of a {label}'"]
    """
    if value is None or value is False or value == () or value is dataclasses.MISSING:
        return None
    if isinstance(value, str) and (not value or " " in value):
        return repr(value)
    return str(value)


@functools.cache
def declared_defaults() -> dict[str, Any]:
    """Every augment setting's declared default, by field name (the caption settings' included)."""
    from sgid.config import AugmentConfig, CaptionSettings

    return {f.name: f.default for f in (*dataclasses.fields(AugmentConfig), *dataclasses.fields(CaptionSettings))}


def with_default(help: str, shown: str | None) -> str:
    return f"{help} [default: {shown}]" if shown else help


def help_text(field: dataclasses.Field) -> str:
    """The flag's help: the declared text and the declared default."""
    spec = spec_of(field)
    return with_default(spec.help, spec.shown if spec.shown is not None else default_text(field.default))


def add_arguments(group: Any, fields: Iterable[dataclasses.Field]) -> None:
    """One ``argparse`` flag per declared field: its name from the field (``--template`` for ``templates``), its
    kind from the field's type (a switch for ``bool``, repeatable for a tuple, a number), the declared help.
    Every flag defaults to None, "not given", so the method's, the preset's or the declared default applies."""
    for field in fields:
        annotation = field.type if isinstance(field.type, str) else str(field.type)
        kind: dict[str, Any] = {}
        if annotation == "bool":
            kind["action"] = "store_true"
        elif annotation.startswith("tuple["):
            kind["action"] = "append"
        elif annotation.split(" | ")[0] in ("int", "float"):
            kind["type"] = {"int": int, "float": float}[annotation.split(" | ")[0]]
        if spec_of(field).metavar:
            kind["metavar"] = spec_of(field).metavar
        group.add_argument(flag_of(field.name), default=None, help=help_text(field), **kind)


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
    from sgid.config import AugmentConfig, CaptionSettings

    return (*options_of(AugmentConfig, NOT_OPTIONS), *options_of(CaptionSettings))


def flag_of(field: str) -> str:
    """The CLI flag that sets a settings field: ``templates`` → ``--template``."""
    return "--" + RENAMED.get(field, (field, None))[0].replace("_", "-")


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
