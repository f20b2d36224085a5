"""The documentation keeps up with the code: every module under src/sgid has its line in ARCHITECTURE.md, every
``sgid`` subcommand and each of its flags is in README.md's command reference (the flags read from the argparse
parsers themselves), and every field a run writes is in docs/augment.md's manifest table."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from method_runs import METHOD_OPTIONS, rows
from sgid.cli import build_parser
from sgid.manifest import ManifestRow

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "sgid"


def between(text: str, heading: str) -> str:
    """The part of a markdown ``text`` under the level-2 ``heading``, up to the next level-2 heading."""
    assert f"\n{heading}\n" in text, f"no {heading!r} heading"
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


# -- ARCHITECTURE.md: one line per module ----------------------------------------------------------------------
def test_every_module_has_its_line_in_architecture_and_every_line_a_module() -> None:
    modules = between((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"), "## Modules (`src/sgid/`)")
    files = sorted(p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py"))
    assert len(files) > 100, "the module list was not found: the test would prove nothing"
    missing = [name for name in files if f"`{name}`" not in modules]
    assert not missing, f"ARCHITECTURE.md has no line for {missing}"
    stale = sorted(set(re.findall(r"`([\w/]+\.py)`", modules)) - set(files))
    assert not stale, f"ARCHITECTURE.md lists modules that do not exist: {stale}"


# -- README.md: every command and flag -------------------------------------------------------------------------
def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def readme_section(command: str) -> str | None:
    """The README's ``### `sgid COMMAND ...``` section of the command reference."""
    reference = between((ROOT / "README.md").read_text(encoding="utf-8"), "## Command reference")
    for part in re.split(r"^### ", reference, flags=re.MULTILINE)[1:]:
        if re.match(rf"`sgid {re.escape(command)}[ `]", part):
            return part
    return None


def long_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--flag`` the parser takes and shows in its help (hidden ones are accepted only for old scripts)."""
    flags = {
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--")
    }
    return sorted(flags - {"--help"})


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_command_and_each_of_its_flags_is_in_the_readme_command_reference(command: str) -> None:
    section = readme_section(command)
    assert section is not None, f"README.md's command reference has no section '### `sgid {command} ...`'"
    flags = long_flags(commands()[command])
    assert flags, "no flags read from the parser: the test would prove nothing"
    missing = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", section)]
    assert not missing, f"README.md's `sgid {command}` section does not mention {missing}"


# -- docs/augment.md: every manifest field ---------------------------------------------------------------------
def documented_fields() -> set[str]:
    """The field names in the first column of docs/augment.md's manifest table."""
    table = between((ROOT / "docs" / "augment.md").read_text(encoding="utf-8"), "## Manifest fields (`metadata.jsonl`)")
    fields: set[str] = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            fields |= set(re.findall(r"`(\w+)`", line.split("|")[1]))
    return fields


def functions(path: Path, name: str) -> list[ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert found, f"no function {name} in {path}"
    return found


def _keys(node: ast.AST) -> set[str]:
    assert isinstance(node, ast.Dict)
    return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def written_fields() -> set[str]:
    """The fields ``execute.manifest_row`` writes, read from its source: the typed core, the ``details`` dict,
    every ``details.update(name=...)`` and ``details["name"] = ...``, and the ControlNet fields it adds."""
    fields = set(ManifestRow.CORE)
    (manifest_row,) = functions(SRC / "execute.py", "manifest_row")
    for node in ast.walk(manifest_row):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(target, ast.Name) and target.id == "details":
            fields |= _keys(node.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "details":
                fields |= {keyword.arg for keyword in node.keywords if keyword.arg}
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id == "details" and isinstance(node.slice, ast.Constant):
                fields.add(str(node.slice.value))
    for control in functions(SRC / "stages" / "bundle.py", "control_fields"):
        for node in ast.walk(control):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
                fields |= _keys(node.value)
    return fields


def test_every_field_manifest_row_writes_is_in_the_manifest_table() -> None:
    written = written_fields()
    assert {"seed", "backend", "parent_sha256", "chain", "lora_scale", "controlnet_model"} <= written, written
    missing = sorted(written - documented_fields())
    assert not missing, f"docs/augment.md's manifest table lacks {missing}"


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_every_field_a_method_writes_is_in_the_manifest_table(method: str, method_runs) -> None:  # type: ignore[no-untyped-def]
    fields = {key for row in rows(method_runs.reference(method)) for key in row}
    assert fields >= set(ManifestRow.CORE)
    missing = sorted(fields - documented_fields())
    assert not missing, f"docs/augment.md's manifest table lacks what {method} writes: {missing}"


# -- test names the docs cite ----------------------------------------------------------------------------------
DOCS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_test_the_docs_cite_exists() -> None:
    """A doc that says "this test guards it" must name a test that runs: ``tests/test_x.py::test_y`` is a function
    of that file, a bare ``test_y`` in backquotes is a function of some test file (or a test module)."""
    defined: dict[str, set[str]] = {
        path.name: set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE))
        for path in (ROOT / "tests").glob("test_*.py")
    }
    everywhere = set().union(*defined.values()) | {Path(file).stem for file in defined}  # tests, or a module
    cited, missing = 0, []
    for doc in DOCS:
        text = doc.read_text()
        for file, name in re.findall(r"tests/(test_\w+\.py)::(test_\w+)", text):
            cited += 1
            if name not in defined.get(file, set()):
                missing.append(f"{doc.relative_to(ROOT)}: tests/{file}::{name}")
        for name in re.findall(r"`(test_\w+)`", text):
            cited += 1
            if name not in everywhere:
                missing.append(f"{doc.relative_to(ROOT)}: {name}")
    assert cited > 40 and not missing, missing
