"""The run's journal, read back after anything: torn, duplicated, reordered, non-JSON and wrong-typed lines.

The rule (docs/reliability.md, "Outside data"): a whole, well-formed line counts; the last line of a key wins; a torn
last line is cut off; any other bad line is skipped with a warning (its item is made again); a path outside OUT is
never trusted. Reading never raises.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from properties import EXAMPLES, check
from sgid.manifest import dumps
from sgid.runstore import JOURNAL, RunStore

KEYS = [f"c/{i}.png\x1f0\x1fsgid" for i in range(4)]
GARBAGE = [
    b"not json",
    b"\xff\xfe\x00 not utf-8",
    b"[]",
    b"null",
    b'"row"',
    b'{"kind": "row"}',
    b'{"kind": "row", "key": 3, "row": {"file_name": "c/0.png"}}',
    b'{"kind": "row", "key": "c/0.png\\u001f0\\u001fsgid", "row": []}',
    b'{"kind": "picture", "key": "k", "row": {}}',
    b'{"kind": "row", "key": "evil", "row": {"file_name": "../../outside.png"}}',
    b'{"kind": "row", "key": "evil2", "row": {"file_name": "/etc/passwd"}}',
    b'{"kind": "row", "key": "evil3", "row": {"file_name": 7}}',
    b"[" * 5_000,  # nested too deeply for the JSON parser
]


def entry(kind: str, key: str, version: int) -> dict[str, Any]:
    name = f"c/{KEYS.index(key)}.png"
    row = {"file_name": name, "source": name, "k": 0, "version": version} if kind == "row" else {"reason": "x"}
    return {"kind": kind, "key": key, "row": row}


def fresh_out(folder: Path) -> Path:
    """An OUT with a run.json and every image file a journal line may name."""
    with RunStore(folder, {}, {"x": 1}).session():
        pass
    (folder / "c").mkdir(exist_ok=True)
    for i in range(len(KEYS)):
        (folder / "c" / f"{i}.png").write_bytes(b"png")
    return folder


def expected(lines: list[bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model: the last well-formed entry of each key (rows and output errors)."""
    rows: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    for line in lines:
        try:
            e = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            continue
        if isinstance(e, dict) and e.get("key") in KEYS and isinstance(e.get("row"), dict):
            rows.pop(e["key"], None)
            errors.pop(e["key"], None)
            (rows if e["kind"] == "row" else errors)[e["key"]] = e["row"]
    return rows, errors


journal_lines = st.lists(
    st.one_of(
        st.builds(
            lambda kind, key, version: dumps(entry(kind, key, version)).encode(),
            st.sampled_from(["row", "output_error"]),
            st.sampled_from(KEYS),
            st.integers(0, 3),
        ),
        st.sampled_from(GARBAGE),
        st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    ),
    max_size=12,
)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_any_journal_reads_back_as_its_well_formed_lines(tmp_path_factory: pytest.TempPathFactory, examples) -> None:  # type: ignore[no-untyped-def]
    out = fresh_out(tmp_path_factory.mktemp("journal"))

    @check(examples)
    @given(lines=journal_lines, torn=st.binary(max_size=30).filter(lambda b: b"\n" not in b), seed=st.integers(0, 9))
    def prop(lines: list[bytes], torn: bytes, seed: int) -> None:
        random.Random(seed).shuffle(lines)  # the order of lines never matters but for the last word on a key
        body = b"".join(line + b"\n" for line in lines)
        (out / JOURNAL).write_bytes(body + torn)
        store = RunStore(out, {}, {"x": 1}).peek()  # reads, repairs nothing
        rows, errors = expected(lines)
        assert store.rows == rows and store.output_errors == errors
        with RunStore(out, {}, {"x": 1}).session() as opened:  # opening cuts the torn tail off, nothing else
            assert opened.rows == rows
        assert (out / JOURNAL).read_bytes() == body


def test_a_damaged_line_in_the_middle_loses_only_its_own_item(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = fresh_out(tmp_path / "out")
    lines = [dumps(entry("row", KEYS[0], 0)), "{not json", dumps(entry("row", KEYS[1], 0))]
    (out / JOURNAL).write_text("\n".join(lines) + "\n")
    with RunStore(out, {}, {"x": 1}).session() as store:
        assert set(store.rows) == {KEYS[0], KEYS[1]}
        store.write_manifests()
    assert "1 damaged line(s) ignored" in capsys.readouterr().err
    assert (out / JOURNAL).read_text().count("\n") == 3  # nothing after the bad line was cut off


def test_a_path_outside_out_in_the_journal_is_never_touched(tmp_path: Path) -> None:
    out = fresh_out(tmp_path / "out")
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    line = {"kind": "row", "key": "evil", "row": {"file_name": "../victim.png", "source": "x", "k": 0}}
    (out / JOURNAL).write_text(json.dumps(line) + "\n")
    with RunStore(out, {}, {"x": 2}, overwrite=True).session() as store:  # --overwrite removes what sgid wrote
        assert store.rows == {}
    assert victim.read_bytes() == b"keep me"
