"""Each method declares its own options once (``Method.Options``): the ``sgid augment`` flags, their help, the
settings' defaults and the one-line errors all come from that declaration. The settings load no torch."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sgid.cli import build_parser, main
from sgid.commands.augment import options_from_args
from sgid.config import AugmentConfig
from sgid.methods import METHODS, method_options
from sgid.methods.base import Method, TextModelOptions
from sgid.options import (
    MethodOptions,
    declared_defaults,
    default_text,
    flag_of,
    option,
    resolve_options,
    spec_of,
)


def _augment_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["augment"]  # type: ignore[union-attr]


def _action(flag: str) -> argparse.Action:
    (found,) = [a for a in _augment_parser()._actions if flag in a.option_strings]
    return found


def _config(argv: list[str]) -> AugmentConfig:
    """The settings ``sgid augment IN --out OUT ARGV`` runs with."""
    args = build_parser().parse_args(["augment", "in", "--out", "out", *argv])
    return AugmentConfig.build(args.input, args.out, **resolve_options(options_from_args(args)))


@pytest.mark.parametrize("method", METHODS.names())
def test_without_method_flags_every_method_option_has_its_declared_default(method: str) -> None:
    given = ["--pool", "pool"] if method == "retrieval" else []  # retrieval cannot run without a pool
    config = _config(["--method", method, *given])
    declared = method_options()
    assert {f.name for f in dataclasses.fields(METHODS.get(method).Options)} <= {f.name for f in declared}
    for field in declared:
        if field.name != "pool" or method != "retrieval":
            assert getattr(config, field.name) == field.default, field.name


@pytest.mark.parametrize("field", method_options(), ids=lambda f: f.name)
def test_every_declared_option_is_a_flag_that_says_its_declared_default(field: dataclasses.Field) -> None:
    action = _action(flag_of(field.name))
    assert action.default is None  # "not given": the method's, the preset's or the declared default applies
    spec = spec_of(field)
    assert action.help is not None and action.help.startswith(spec.help)
    if spec.shown is not None:
        assert action.help.endswith(f"[default: {spec.shown}]")
    elif isinstance(field.default, (int, float, str)) and not isinstance(field.default, bool):
        assert action.help.endswith(f"[default: {field.default}]")
    else:
        assert "[default:" not in action.help
    kind = {"bool": argparse._StoreTrueAction, "tuple": argparse._AppendAction}.get(field.type.split("[")[0])
    if kind is not None:
        assert isinstance(action, kind)
    else:
        assert action.type is {"int": int, "float": float}.get(field.type.split(" | ")[0])


def test_the_settings_take_each_option_as_its_method_declares_it() -> None:
    settings = {f.name: f for f in dataclasses.fields(AugmentConfig)}
    for field in method_options():
        assert settings[field.name].default == field.default, field.name
        assert settings[field.name].type == field.type, field.name


def test_help_states_the_declared_defaults_of_general_settings_too() -> None:
    text = " ".join(_augment_parser().format_help().split())
    for piece in (
        "w_l [default: 1.5]",
        "images per UNet call [default: 4]",
        "textual label l [default: 'A picture of a {label}']",
        "unconditional prompt [default: '']",
        "nucleus sampling p [default: 0.9]",
        "instruct_pix2pix image guidance [default: 1.5]",
        "text2img sentence template with {label} (repeatable) [default: built-in list]",
        "Stable Diffusion 1.x/2.x or XL",
    ):
        assert piece in text, piece


def _readme_augment_defaults() -> dict[str, str]:
    """flag -> the default cell of README's ``sgid augment`` tables (backticks and quotes removed)."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("### `sgid augment") : text.index("### `sgid demo")]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("| `-"):
            names, defaults = (cell.strip() for cell in line.split("|")[1:3])
            flags = re.findall(r"`(--[a-z-]+)", names)
            values = [v.strip() for v in defaults.split(",")]
            for flag, value in zip(
                flags, values if len(values) == len(flags) else [defaults] * len(flags), strict=True
            ):
                rows[flag] = value.replace("`", "").strip('"')
    return rows


def test_the_readme_states_every_declared_default() -> None:
    """README's reference gives each augment setting's default as declared: a method's own options where the
    method declares them, the general ones in AugmentConfig (switches and "none" defaults are words there)."""
    rows = _readme_augment_defaults()
    shown = {f.name: spec_of(f).shown for f in method_options()}
    checked = []
    for name, value in declared_defaults().items():
        expected = shown.get(name) or default_text(value)
        if expected is None or isinstance(value, bool):
            continue
        cell = rows[flag_of(name)]
        numbers = isinstance(value, (int, float)) and re.fullmatch(r"[-\d.]+", cell) and float(cell) == value
        assert numbers or cell == expected.strip("'").replace("the preset's", "preset's"), (name, cell, expected)
        checked.append(name)
    assert {"noise", "image_guidance", "duplicate_threshold", "boomerang_prompt", "label_template"} <= set(checked)


def test_the_methods_read_the_options_they_did() -> None:
    """``Method.options`` (a flag no method of the run reads gets a warning) is ``reads`` + the declared fields."""
    expected = {
        "sgid": {"noise", "prompt"},
        "text2img": {"templates", "text_model", "sentences"},
        "diverse_caption": {"noise", "prompt", "summarize", "text_model", "sentences"},
        "instruct_pix2pix": {"instructions", "image_guidance", "instruct_model", "text_model", "sentences"},
        "boomerang": {"noise", "boomerang_prompt"},
        "retrieval": {"pool", "retrieval_query", "duplicate_threshold", "exclude"},
        "randaugment": {"perturb_probability"},
        "random_erasing": {"perturb_probability"},
        "cutmix": {"perturb_probability"},
    }
    assert {name: set(METHODS.get(name).options) for name in METHODS.names()} == expected


#: a bad value of every checked method option, and the line it gets (today's wording, pinned)
BAD_VALUES = [
    ("--sentences", "0", "invalid --sentences 0: must be >= 1"),
    ("--image-guidance", "-1", "invalid --image-guidance -1.0: must be >= 0"),
    ("--duplicate-threshold", "2", "invalid --duplicate-threshold 2.0: must be in [-1, 1]"),
    ("--perturb-probability", "1.5", "invalid --perturb-probability 1.5: must be in [0, 1]"),
    ("--perturb-probability", "nan", "invalid --perturb-probability nan: must be in [0, 1]"),
    ("--boomerang-prompt", "loud", "invalid --boomerang-prompt 'loud'; choose from: empty, label"),
    ("--retrieval-query", "pixels", "invalid --retrieval-query 'pixels'; choose from: text, image, both"),
]


def test_every_checked_method_option_has_a_bad_value_case() -> None:
    checked = {
        flag_of(f.name)
        for f in method_options()
        if spec_of(f).choices or spec_of(f).at_least is not None or spec_of(f).at_most is not None
    }
    assert checked == {flag for flag, _, _ in BAD_VALUES}


@pytest.mark.parametrize(("flag", "value", "message"), BAD_VALUES)
def test_a_bad_method_option_exits_2_with_one_line_before_any_model_loads(
    flag: str, value: str, message: str, image_folder: Path, tmp_path: Path, capsys, forbid_model_loading
) -> None:  # type: ignore[no-untyped-def]
    argv = ["augment", str(image_folder), "--out", str(tmp_path / "out"), "--models", "tiny", flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"sgid: error: {message}\n"
    assert forbid_model_loading == [] and not (tmp_path / "out").exists()


def test_an_options_dataclass_checks_itself() -> None:
    from sgid.errors import SgidError
    from sgid.methods.instruct import InstructOptions

    assert InstructOptions().image_guidance == AugmentConfig.image_guidance == 1.5
    with pytest.raises(SgidError, match=r"invalid --sentences 0: must be >= 1"):
        InstructOptions(sentences=0)


def test_an_option_two_methods_declare_separately_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared option is one declaration (a base such as ``TextModelOptions``), so its default cannot differ."""

    @dataclasses.dataclass(frozen=True)
    class Again(MethodOptions):
        sentences: int = option(5, "sentences, declared a second time")

    class Twice(Method):
        Options = Again

    assert Twice.options == ("sentences",)
    monkeypatch.setitem(METHODS._items, "twice", Twice)
    with pytest.raises(TypeError, match="option 'sentences' is declared twice"):
        method_options()
    monkeypatch.setitem(METHODS._items, "twice", type("Shared", (Method,), {"Options": TextModelOptions}))
    assert [f.name for f in method_options()].count("sentences") == 1


@pytest.mark.parametrize(
    "statement",
    [
        "import sgid.config",
        "import sgid.methods",
        "import sgid.options; sgid.options.augment_signature()",
        "import argparse, sgid.commands.augment as a; a.register(argparse.ArgumentParser().add_subparsers())",
    ],
)
def test_settings_methods_and_the_augment_flags_load_no_torch(statement: str) -> None:
    """``import sgid.config`` took about 4 s when it imported torch and transformers; planning needs neither."""
    heavy = "('torch', 'transformers', 'diffusers')"
    code = f"{statement}; import sys; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
