"""A run killed at any moment (kill -9) and rerun ends exactly as an uninterrupted run.

The kill is deterministic: the test-only ``SGID_TEST_KILL_AFTER_ROWS=N`` makes the run SIGKILL itself right after
its N-th journal row, so the image in flight (the second of a batch of two) is lost; the rerun remakes that batch
whole and keeps the missing image, so every file ends byte for byte as in the uninterrupted run.
"""

from __future__ import annotations

import json

import pytest

from method_runs import METHOD_OPTIONS, VARIANTS, assert_same_run, rows, run_killed
from sgid.errors import RunDirError, SgidError
from sgid.methods import METHODS
from sgid.runstore import JOURNAL, RunStore

KILL_AFTER = 3  # odd, so the run dies in the middle of a batch of two


def journal_lines(out) -> list[bytes]:  # type: ignore[no-untyped-def]
    return (out / JOURNAL).read_bytes().splitlines()


def test_every_method_is_killed_and_resumed() -> None:
    assert set(METHODS.names()) <= set(METHOD_OPTIONS), "add the new method to tests/method_runs.py"


@pytest.mark.parametrize("method", [*(m for m in METHOD_OPTIONS if "+" not in m), *VARIANTS])  # SDXL, ControlNet too
def test_killed_after_three_rows_then_rerun_equals_uninterrupted(method: str, method_runs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reference = method_runs.reference(method)
    out = tmp_path / "out"
    run_killed(method_runs.augment, method, out, after=KILL_AFTER)
    assert len(journal_lines(out)) == KILL_AFTER and not (out / "metadata.jsonl").exists()
    summary = method_runs.augment(method, out)
    assert (summary.already_done, summary.generated) == (KILL_AFTER, len(rows(reference)) - KILL_AFTER)
    assert_same_run(out, reference)
    again = method_runs.augment(method, out)  # a finished run is left as it is
    assert again.generated == 0 and again.total_images == len(rows(reference))


def test_a_chain_killed_in_each_stage_resumes_to_the_uninterrupted_run(method_runs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    method = "text2img+sgid"
    reference = method_runs.reference(method)
    first_stage = len(rows(reference.parent / "out.stages" / "1-text2img"))
    out = tmp_path / "out"
    stage_one = tmp_path / "out.stages" / "1-text2img"
    run_killed(method_runs.augment, method, out, after=KILL_AFTER)
    assert len(journal_lines(stage_one)) == KILL_AFTER and not out.exists()
    # the rest of stage 1, then three rows into stage 2
    run_killed(method_runs.augment, method, out, after=first_stage - KILL_AFTER + KILL_AFTER)
    assert len(journal_lines(stage_one)) == first_stage and len(journal_lines(out)) == KILL_AFTER
    summary = method_runs.augment(method, out)
    assert summary.already_done == KILL_AFTER
    assert_same_run(stage_one, reference.parent / "out.stages" / "1-text2img")
    assert_same_run(out, reference)
    assert all(r["chain"] == ["text2img", "sgid"] for r in rows(out))


def test_the_kill_hook_counts_journal_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def commit_five() -> None:
        with RunStore(tmp_path / "out", {}, {"x": 1}).session() as store:
            for i in range(5):
                store.commit_image(str(i), {"file_name": f"c/{i}.png", "source": f"c/{i}.png", "k": 0}, b"png")

    run_killed(commit_five, after=2)
    assert len(journal_lines(tmp_path / "out")) == 2
    with RunStore(tmp_path / "out", {}, {"x": 1}).session() as store:  # unset: no kill
        assert [store.is_done(str(i)) for i in range(5)] == [True, True, False, False, False]


def test_torn_journal_line_is_ignored_and_truncated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    store = RunStore(out, {"sgid_version": "test"}, {"x": 1})
    with store.session():
        store.commit_image("a", {"file_name": "c/a.png", "source": "c/a.png", "k": 0}, b"png-a")
    with open(out / JOURNAL, "ab") as journal:
        journal.write(b'{"kind": "row", "key": "b", "row": {"file_na')  # killed mid-write
    store = RunStore(out, {"sgid_version": "test"}, {"x": 1})
    with store.session():
        assert store.is_done("a") and not store.is_done("b")
    assert (out / JOURNAL).read_bytes().endswith(b"}\n")


def test_an_image_deleted_by_hand_is_regenerated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    with RunStore(out, {}, {"x": 1}).session() as store:
        store.commit_image("a", {"file_name": "c/a.png", "source": "c/a.png", "k": 0}, b"png-a")
    (out / "c" / "a.png").unlink()
    with RunStore(out, {}, {"x": 1}).session() as store:
        assert not store.is_done("a")


def test_an_image_changed_since_it_was_journaled_is_regenerated(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    with RunStore(out, {}, {"x": 1}).session() as store:
        store.commit_image("a", {"file_name": "c/a.png", "source": "c/a.png", "k": 0}, b"png-a")
        store.commit_image("b", {"file_name": "c/b.png", "source": "c/b.png", "k": 0}, b"png-b")
    (out / "c" / "a.png").write_bytes(b"pn")  # cut short by a copy or a damaged disk
    (out / "c" / "b.png").write_bytes(b"PNG-B")  # same size: not looked into (a resume reads no image)
    assert not RunStore(out, {}, {"x": 1}).peek().is_done("a")  # --dry-run and "nothing to do" see it too
    with RunStore(out, {}, {"x": 1}).session() as store:
        assert not store.is_done("a") and store.is_done("b")
    assert "1 image(s) changed since this run wrote them (another size): made again" in capsys.readouterr().err
    # --overwrite removes every image the run wrote, changed since or not
    with RunStore(out, {}, {"x": 1}).session() as store:
        store.commit_image("a", {"file_name": "c/a.png", "source": "c/a.png", "k": 0}, b"png-a")
    (out / "c" / "a.png").write_bytes(b"pn")
    capsys.readouterr()
    with RunStore(out, {}, {"x": 1}, overwrite=True).session() as store:
        assert not store.is_done("a") and not store.is_done("b")
    assert not (out / "c").exists() and "changed since" not in capsys.readouterr().err
    # a journal written before sizes were recorded still resumes, by the files' presence alone
    (out / "c").mkdir()
    (out / "c" / "a.png").write_bytes(b"pn")
    (out / JOURNAL).write_text('{"kind": "row", "key": "a", "row": {"file_name": "c/a.png", "k": 0}}\n')
    with RunStore(out, {}, {"x": 1}).session() as store:
        assert store.is_done("a")


@pytest.mark.parametrize(
    "size, done", [(5, True), (4, False), (-1, False), (True, True), (5.0, True), ("5", True), (None, True)]
)
def test_a_journaled_size_that_is_not_a_whole_number_is_ignored(tmp_path, size, done) -> None:  # type: ignore[no-untyped-def]
    """Only an int (not a bool) is a size; any other value leaves the file's presence as the test."""
    out = tmp_path / "out"
    with RunStore(out, {}, {"x": 1}).session() as store:
        store.commit_image("a", {"file_name": "c/a.png", "source": "c/a.png", "k": 0}, b"png-a")
    entry = {"kind": "row", "key": "a", "row": {"file_name": "c/a.png", "k": 0}, "bytes": size}
    (out / JOURNAL).write_text(json.dumps(entry) + "\n")
    assert RunStore(out, {}, {"x": 1}).peek().is_done("a") is done


def test_a_second_concurrent_run_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with RunStore(tmp_path / "out", {}, {"x": 1}).session():
        with pytest.raises(RunDirError, match="another sgid run"):
            RunStore(tmp_path / "out", {}, {"x": 1}).open()


def test_a_junk_kill_hook_value_is_one_line_before_anything_is_written(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SGID_TEST_KILL_AFTER_ROWS", "abc")
    with pytest.raises(SgidError, match=r"SGID_TEST_KILL_AFTER_ROWS='abc' \(a test-only hook\) must be a whole"):
        RunStore(tmp_path / "out", {}, {"x": 1}).open()
    assert not (tmp_path / "out").exists()
