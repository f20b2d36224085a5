"""Every parser of outside data, with hypothesis: each input either works or gives one clear line; none crashes.

The image reader (random bytes, real headers with damaged bodies, every Pillow mode, extreme sizes), label-names
files (JSON, CSV, TSV), ``run.json``, ``metadata.jsonl`` written by other tools (extra fields, missing optional
fields, Windows line ends, a byte-order mark, U+2028 inside strings), ``decisions.jsonl``. The journal has its own
module (tests/test_journal.py). ``EXAMPLES``: a bounded budget in the default suite, more under ``slow``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from conftest import make_image_folder
from properties import EXAMPLES, check
from sgid.cli import main
from sgid.dataset import read_label_names
from sgid.errors import RunDirError, SgidError
from sgid.evaluate.generated import read_provenance
from sgid.images import ImageError, generation_size, load_rgb, probe_size
from sgid.manifest import ManifestRow, read_run, read_run_info
from sgid.review.catalog import read_filter_outputs
from sgid.rundir import RunDir
from sgid.runstore import RunStore

#: Text that breaks naive line splitting: U+2028/U+2029, NEL, FS/GS/RS, form feed, a lone CR, quotes, commas.
AWKWARD = st.text(
    st.one_of(
        st.characters(codec="utf-8"), st.sampled_from(["\u2028", "\u2029", "\x85", "\x1c", "\x0c", "\r", ",", '"'])
    )
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | AWKWARD,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(AWKWARD, inner, max_size=3),
    max_leaves=8,
)


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message, repr(message)
    return message


# -- the image reader -------------------------------------------------------------------------------------------
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"]
#: Every Pillow mode, each in formats that store it as it is (WEBP: modes only Pillow itself has)
MODES = [
    *[("1", f) for f in ("PNG", "TIFF")],
    *[("L", f) for f in ("PNG", "JPEG")],
    *[("LA", f) for f in ("PNG", "TIFF")],
    *[("P", f) for f in ("PNG", "GIF", "TIFF")],
    ("PA", "TIFF"),
    ("RGB", "JPEG"),
    *[("RGBA", f) for f in ("PNG", "TIFF")],
    ("RGBX", "TIFF"),
    *[("CMYK", f) for f in ("JPEG", "TIFF")],
    ("YCbCr", "TIFF"),
    ("LAB", "TIFF"),
    ("I", "TIFF"),
    *[("I;16", f) for f in ("PNG", "TIFF")],
    ("I;16B", "TIFF"),
    ("I;16L", "TIFF"),
    ("F", "TIFF"),  # random bytes: NaN, infinities and huge values among the floats
    ("HSV", "WEBP"),
    ("RGBa", "WEBP"),
]


def outcome(path: Path, **limits: int) -> tuple[str, Any]:
    """("ok", size) or ("error", reason) from load_rgb. probe_size reads the header only: it agrees with a
    readable image and may pass a damaged body (the run lists that image when it reads it)."""
    try:
        loaded = load_rgb(path, **limits)
    except ImageError as exc:
        reason = one_line(exc)
        try:
            probe_size(path, **limits)
        except ImageError as probed:
            one_line(probed)
        return "error", reason
    assert loaded.image.mode == "RGB" and loaded.image.size == loaded.original_size
    assert probe_size(path, **limits) == loaded.image.size
    return "ok", loaded.image.size


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """An image of ``mode`` filled with random bytes."""
    needed = len(Image.new(mode, size).tobytes())
    return Image.frombytes(mode, size, np.random.default_rng(seed).bytes(needed))


@pytest.mark.parametrize("examples", EXAMPLES)
def test_random_bytes_are_an_image_or_one_line(tmp_path: Path, examples: int) -> None:
    path = tmp_path / "x.png"

    @check(examples)
    @given(data=st.binary(max_size=4096))
    def prop(data: bytes) -> None:
        path.write_bytes(data)
        outcome(path)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_real_headers_with_damaged_bodies_are_an_image_or_one_line(tmp_path: Path, examples: int) -> None:
    path = tmp_path / "x.img"

    @check(examples)
    @given(
        fmt=st.sampled_from(FORMATS),
        size=st.tuples(st.integers(8, 48), st.integers(8, 48)),
        seed=st.integers(0, 1000),
        cut=st.floats(0, 1),
        flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
        tail=st.binary(max_size=64),
    )
    def prop(fmt: str, size: tuple[int, int], seed: int, cut: float, flips: list, tail: bytes) -> None:
        data = bytearray(encoded(noise("RGB", size, seed), fmt))
        for where, value in flips:
            data[min(len(data) - 1, int(where * len(data)))] = value
        path.write_bytes(bytes(data[: max(1, int(cut * len(data)))]) + tail)
        outcome(path)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_every_pillow_mode_reads_as_8_bit_rgb(tmp_path: Path, examples: int) -> None:
    @check(examples)
    @given(mode=st.sampled_from(MODES), size=st.tuples(st.integers(8, 40), st.integers(8, 40)), seed=st.integers(0, 99))
    def prop(mode: tuple[str, str], size: tuple[int, int], seed: int) -> None:
        path = tmp_path / f"x.{mode[1].lower()}"
        noise(mode[0], size, seed).save(path, format=mode[1])
        assert outcome(path) == ("ok", size)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_extreme_sizes_and_aspect_ratios(tmp_path: Path, examples: int) -> None:
    path = tmp_path / "x.png"

    @check(examples)
    @given(
        width=st.integers(1, 5000),
        height=st.integers(1, 5000),
        min_side=st.integers(1, 16),
        max_pixels=st.integers(1, 10**6),
    )
    def prop(width: int, height: int, min_side: int, max_pixels: int) -> None:
        assume(width * height <= 400_000)
        Image.new("L", (width, height), 128).save(path)
        result, detail = outcome(path, min_side=min_side, max_pixels=max_pixels)
        if width * height > max_pixels:
            assert result == "error" and detail.startswith("image too large")  # refused before decoding
        elif min(width, height) < min_side:
            assert result == "error" and detail.startswith("image too small")
        else:
            assert (result, detail) == ("ok", (width, height))
            w, h = generation_size((width, height), 512)
            assert w % 8 == h % 8 == 0 and min(w, h) >= 8 and max(w, h) <= 1024


# -- label-names files ----------------------------------------------------------------------------------------
NAMES = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1).map(str.strip).filter(bool),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1).map(str.strip).filter(bool),
    max_size=6,
)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_any_label_names_file_is_a_mapping_or_one_line(tmp_path: Path, examples: int) -> None:
    @check(examples)
    @given(
        data=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()),
        suffix=st.sampled_from([".json", ".csv", ".tsv", ".txt"]),
    )
    def prop(data: bytes, suffix: str) -> None:
        path = tmp_path / f"names{suffix}"
        path.write_bytes(data)
        try:
            names = read_label_names(path)
        except SgidError as exc:
            one_line(exc)
            return
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in names.items())


@pytest.mark.parametrize("examples", EXAMPLES)
def test_label_names_written_by_other_tools_read_back(tmp_path: Path, examples: int) -> None:
    @check(examples)
    @given(
        names=NAMES,
        kind=st.sampled_from([".json", ".csv", ".tsv"]),
        bom=st.booleans(),
        crlf=st.booleans(),
        header=st.booleans(),
    )
    def prop(names: dict[str, str], kind: str, bom: bool, crlf: bool, header: bool) -> None:
        first = [c.lower() for c in next(iter(names.items()), ("", ""))]
        assume(first not in (["folder", "label"], ["class", "label"]))  # a first row like a header is one
        if kind == ".json":
            text = json.dumps(names, ensure_ascii=crlf)
        else:
            buffer = io.StringIO()
            delimiter, ending = "\t" if kind == ".tsv" else ",", "\r\n" if crlf else "\n"
            # Python's writer leaves a CR unquoted when lines end in LF alone: a file no reader can split
            quoting = csv.QUOTE_ALL if any("\r" in k + v for k, v in names.items()) else csv.QUOTE_MINIMAL
            writer = csv.writer(buffer, delimiter=delimiter, lineterminator=ending, quoting=quoting)
            writer.writerows([["folder", "label"]] * header + [[k, v] for k, v in names.items()])
            text = buffer.getvalue()
        path = tmp_path / f"names{kind}"
        path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
        assert read_label_names(path) == names


def test_a_label_names_file_that_is_not_utf8_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 1})
    names = tmp_path / "names.csv"
    names.write_bytes(b"cat,chat \xe9l\xe9gant\n")  # Latin-1
    code = main(
        ["augment", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", "--label-names", str(names)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"sgid: error: label-names file {names} is not UTF-8 text (byte 10); save it as UTF-8"]


# -- run.json ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("examples", EXAMPLES)
def test_any_run_json_is_read_or_refused_in_one_line(tmp_path_factory: pytest.TempPathFactory, examples: int) -> None:
    out = tmp_path_factory.mktemp("run-json")
    (out / "metadata.jsonl").write_text('{"file_name": "c/a.png", "label": "c"}\n')

    @check(examples)
    @given(
        data=st.binary(max_size=200)
        | JSON.map(lambda v: json.dumps(v).encode())
        | st.builds(
            lambda v, i: json.dumps({"identity": i, "identity_sha256": v, "config": i, "models": i}).encode(),
            JSON,
            JSON,
        )
    )
    def prop(data: bytes) -> None:
        (out / "run.json").write_bytes(data)
        try:
            RunStore(out, {}, {"x": 1}).check()
        except RunDirError as exc:
            one_line(exc)
        try:
            info = read_run_info(out / "run.json")
        except SgidError as exc:
            one_line(exc)
        else:
            assert isinstance(info, dict)
            read_run(out).input_dir  # noqa: B018 - a wrongly typed config.input_dir is None, not an error
            read_provenance("x", out, 1)


# -- metadata.jsonl written by other tools ----------------------------------------------------------------------
SEGMENT = st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00"), min_size=1).filter(
    lambda s: s not in (".", "..")
)
OPTIONAL = {
    "label_text": AWKWARD.filter(bool),  # an empty label_text reads as the folder's default label
    "source": st.builds(lambda a, b: f"{a}/{b}", SEGMENT, SEGMENT),
    "source_sha256": st.text("0123456789abcdef", min_size=64, max_size=64),
    "k": st.integers(0, 10**6) | st.none(),
    "method": st.sampled_from(["sgid", "text2img", "original", "someone-elses"]),
}
EXTRA = st.dictionaries(AWKWARD.filter(lambda k: k not in ManifestRow.CORE), JSON, max_size=3)


@st.composite
def manifest_rows(draw: Any) -> list[dict[str, Any]]:
    rows = []
    for index in range(draw(st.integers(0, 5))):
        row: dict[str, Any] = {"file_name": f"{draw(SEGMENT)}/{index}-{draw(SEGMENT)}", "label": draw(SEGMENT)}
        for name, strategy in OPTIONAL.items():
            if draw(st.booleans()):
                row[name] = draw(strategy)
        row.update(draw(EXTRA))
        rows.append(dict(draw(st.permutations(list(row.items())))))
    return rows


@pytest.mark.parametrize("examples", EXAMPLES)
def test_manifests_written_by_other_tools_read_back(tmp_path_factory: pytest.TempPathFactory, examples: int) -> None:
    folder = tmp_path_factory.mktemp("foreign-run")

    @check(examples)
    @given(
        rows=manifest_rows(),
        ascii_only=st.booleans(),
        ending=st.sampled_from(["\n", "\r\n"]),
        bom=st.booleans(),
        blank=st.booleans(),
    )
    def prop(rows: list[dict[str, Any]], ascii_only: bool, ending: str, bom: bool, blank: bool) -> None:
        lines = [json.dumps(row, ensure_ascii=ascii_only) for row in rows] + [""] * blank
        (folder / "metadata.jsonl").write_bytes(("\ufeff" * bom + ending.join(lines) + ending).encode("utf-8"))
        read = read_run(folder).rows
        assert [row.to_json() for row in read] == rows  # every field kept
        for row, original in zip(read, rows, strict=True):
            assert row.file_name == original["file_name"] and row.label == original["label"]
            assert row.k == original.get("k") and row.source == original.get("source")


@pytest.mark.parametrize("examples", EXAMPLES)
def test_any_manifest_is_rows_or_one_line(tmp_path_factory: pytest.TempPathFactory, examples: int) -> None:
    folder = tmp_path_factory.mktemp("broken-run")

    @check(examples)
    @given(lines=st.lists(st.binary(max_size=60) | JSON.map(lambda v: json.dumps(v).encode()), max_size=4))
    def prop(lines: list[bytes]) -> None:
        (folder / "metadata.jsonl").write_bytes(b"\n".join(lines))
        (folder / "errors.jsonl").write_bytes(b"\n".join(reversed(lines)))
        try:
            run = read_run(folder)
        except SgidError as exc:
            one_line(exc)
        else:
            assert all(isinstance(row, ManifestRow) for row in run.rows)


# -- decisions.jsonl (sgid review --filters) --------------------------------------------------------------------
@pytest.mark.parametrize("examples", EXAMPLES)
def test_any_decisions_file_is_decisions_or_one_line(tmp_path_factory: pytest.TempPathFactory, examples: int) -> None:
    base = tmp_path_factory.mktemp("decisions")
    run, filtered = base / "run", base / "filtered"
    run.mkdir()
    filtered.mkdir()
    (filtered / "report.json").write_text("{}")
    (filtered / "run.json").write_text(json.dumps({"filtered_from": str(run)}))
    runs = [RunDir(run, (), {}, None)]
    decision = st.fixed_dictionaries(
        {"file_name": AWKWARD, "decision": st.sampled_from(["kept", "rejected"]), "reason": AWKWARD},
        optional={"x": JSON},
    )

    @check(examples)
    @given(
        rows=st.lists(decision, max_size=4),
        junk=st.lists(st.binary(max_size=40), max_size=2),
        bom=st.booleans(),
        ending=st.sampled_from(["\n", "\r\n"]),
    )
    def prop(rows: list[dict[str, Any]], junk: list[bytes], bom: bool, ending: str) -> None:
        text = "\ufeff" * bom + "".join(json.dumps(r, ensure_ascii=False) + ending for r in rows)
        (filtered / "decisions.jsonl").write_bytes(text.encode("utf-8") + b"\n".join(junk))
        try:
            found = read_filter_outputs([filtered], runs)[0]
        except SgidError as exc:
            assert junk, exc  # only the junk may be refused
            one_line(exc)
            return
        assert found == {r["file_name"]: (r["decision"], r["reason"]) for r in rows} or junk
