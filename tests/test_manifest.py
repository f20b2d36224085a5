"""The manifest schema: typed core fields, every other key kept in order, one reader for every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgid.errors import SgidError
from sgid.manifest import ErrorRow, ManifestRow, dumps, read_run


def test_a_row_read_and_written_again_is_the_same_json_line(augmented_run: Path) -> None:
    lines = (augmented_run / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines:
        row = ManifestRow.from_json(json.loads(line))
        assert dumps(row.to_json()) == line  # byte for byte, key order included
        assert isinstance(row.k, int) and row.method == "sgid" and row.source and row.prompt


def test_unknown_keys_round_trip_unchanged_and_in_order() -> None:
    data = {
        "file_name": "cat/a.png",
        "label": "cat",
        "zeta": 1,
        "label_text": "cat",
        "source": "cat/a.png",
        "source_sha256": "ab",
        "k": 0,
        "method": "sgid",
        "applied_guidance": 1.1,
        "alpha": {"nested": [1, 2]},
    }
    row = ManifestRow.from_json(data)
    assert row["zeta"] == 1 and row.get("alpha") == {"nested": [1, 2]} and row.get("missing") is None
    assert [k for k in row.to_json() if k not in ManifestRow.CORE] == ["zeta", "applied_guidance", "alpha"]
    assert row.to_json() == data and dict(row) == data
    assert ManifestRow.from_json(row.to_json()) == row


def test_core_keys_a_row_lacks_stay_absent_but_read_with_defaults() -> None:
    row = ManifestRow.from_json({"file_name": "golden_retriever/x.png", "label": "golden_retriever"})
    assert row.label_text == "golden retriever" and row.method == "unknown" and row.k is None
    assert row.to_json() == {"file_name": "golden_retriever/x.png", "label": "golden_retriever"}
    assert row.chain == ("unknown",)
    original = ManifestRow.from_json({"file_name": "a/x.png", "label": "a", "method": "original"})
    assert original.is_original and original.chain == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "expected a JSON object"),
        ({"label": "a"}, "missing 'file_name'"),
        ({"file_name": "a/x.png"}, "missing 'label'"),
        ({"file_name": "../x.png", "label": "a"}, "must be a relative path inside the folder"),
        ({"file_name": "a/x.png", "label": "a", "source": "/etc/passwd"}, "must be a relative path"),
        ({"file_name": "a/x.png", "label": "a", "k": "1"}, "'k' must be an integer or null"),
        ({"file_name": "a/x.png", "label": "a", "k": True}, "'k' must be an integer"),
        ({"file_name": "a/x.png", "label": "a", "method": 3}, "'method' must be text"),
    ],
)
def test_bad_rows_are_one_line_errors(data: object, message: str) -> None:
    with pytest.raises(SgidError, match=message) as caught:
        ManifestRow.from_json(data, where="metadata.jsonl, line 7")
    assert str(caught.value).startswith("metadata.jsonl, line 7: ") and "\n" not in str(caught.value)


def test_error_rows_keep_their_shape() -> None:
    for data in (
        {"source": "cat/bad.png", "k": None, "reason": "empty file (0 bytes)"},
        {"source": "cat/a.png", "k": 1, "method": "sgid", "reason": "flagged"},
        {"source": "pool:x.png", "k": None, "reason": "near-duplicate", "extra": [1]},
    ):
        row = ErrorRow.from_json(data)
        assert row.to_json() == data and list(row.to_json()) == list(data)
    assert ErrorRow("a", None, "why").is_input and not ErrorRow("a", 0, "why", "sgid").is_input


def test_read_run_reads_all_three_files(augmented_run: Path) -> None:
    record = read_run(augmented_run)
    assert len(record.rows) == 12 and record.errors == ()
    assert record.input_dir is not None and (record.input_dir / record.rows[0].source).is_file()  # type: ignore[operator]
    assert record.info["config"]["method"] == "sgid"


def test_read_run_refuses_broken_folders(tmp_path: Path) -> None:
    with pytest.raises(SgidError, match="run folder not found"):
        read_run(tmp_path / "nope")
    with pytest.raises(SgidError, match="has no metadata.jsonl"):
        read_run(tmp_path)
    row = {"file_name": "a/x.png", "label": "a"}
    (tmp_path / "metadata.jsonl").write_text(dumps(row) + "\n\n" + dumps(row) + "\n")
    with pytest.raises(SgidError, match="a/x.png is listed twice"):
        read_run(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(dumps(row) + "\n{oops\n")
    with pytest.raises(SgidError, match="metadata.jsonl, line 2: not JSON"):
        read_run(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(dumps(row) + "\n")
    (tmp_path / "errors.jsonl").write_text('{"source": "a/y.png", "k": null, "reason": "bad"}\nnot json\n')
    (tmp_path / "run.json").write_text("[]")
    with pytest.raises(SgidError, match="is not an sgid run file"):
        read_run(tmp_path)
    (tmp_path / "run.json").unlink()
    record = read_run(tmp_path)  # errors.jsonl is read leniently: it only explains
    assert record.unusable_sources == {"a/y.png"} and record.info == {} and record.input_dir is None


def test_every_reader_accepts_rows_with_fields_it_does_not_know(augmented_run: Path, tmp_path: Path) -> None:
    """Rows written by a newer sgid or another tool (extra keys anywhere) are read by every command."""
    import shutil

    from sgid.dataset import scan_run
    from sgid.evaluate.data import read_generated
    from sgid.gallery import render_gallery
    from sgid.rundir import read_run_dir

    run = tmp_path / "run"
    shutil.copytree(augmented_run, run)
    lines = [json.loads(line) for line in (run / "metadata.jsonl").read_text().splitlines()]
    widened = [{"first_new": i, **row, "last_new": {"x": [i]}} for i, row in enumerate(lines)]
    (run / "metadata.jsonl").write_text("".join(dumps(r) + "\n" for r in widened))
    entries = read_run_dir(run).entries
    assert [e.row["last_new"] for e in entries] == [{"x": [i]} for i in range(12)]
    assert [e.row.to_json()["first_new"] for e in entries] == list(range(12))
    assert len(scan_run(run).sources) == 12
    assert len(read_generated(run, ["cat", "golden_retriever"])) == 12
    record = read_run(run)
    assert "golden retriever" in render_gallery(run, record.input_dir)  # type: ignore[arg-type]
