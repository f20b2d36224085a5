"""`sgid augment` end to end with the tiny models: outputs, manifest, restart, batching, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import FAST, make_image_folder, noise_image
from sgid.cli import main
from sgid.errors import SgidError
from sgid.pipeline import augment


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_outputs_and_manifest(augmented_run: Path) -> None:
    manifest = rows(augmented_run)
    assert len(manifest) == 6 * 2
    assert sorted(files(augmented_run)) == sorted(r["file_name"] for r in manifest)
    input_dir = Path(json.loads((augmented_run / "run.json").read_text())["config"]["input_dir"])
    for row in manifest:
        assert row["file_name"].startswith(row["label"] + "/")
        assert row["method"] == "sgid" and row["k"] in (0, 1)
        source = input_dir / row["source"]
        assert row["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert len(row["captions"]) == 20 and all(isinstance(c["similarity"], float) for c in row["captions"])
        best = max(row["captions"], key=lambda c: c["similarity"])  # --caption clip (default)
        assert (row["caption"], row["similarity"]) == (best["text"], best["similarity"])
        assert row["prompt"] == f"A picture of a {row['label_text']}, {row['caption']}"
        s = row["similarity"]  # g = f(s) = -4s^2 + 2s + 1, the paper's map, written out
        assert row["guidance_scale"] == pytest.approx(-4 * s * s + 2 * s + 1, abs=1e-12)
        assert (row["label_weight"], row["caption_weight"], row["noise_rate"], row["steps"]) == (1.5, 0.9, 0.5, 4)
        assert row["generator_model"] == "tiny:sd" and row["captioner_model"] == "tiny:blip"
        with Image.open(augmented_run / row["file_name"]) as image:
            assert image.size == (row["width"], row["height"]) == Image.open(source).size
    assert {r["label_text"] for r in manifest} == {"cat", "golden retriever"}
    assert len({r["seed"] for r in manifest}) == 12
    assert (augmented_run / "errors.jsonl").read_text() == ""
    run = json.loads((augmented_run / "run.json").read_text())
    assert run["config"]["noise"] == 0.5 and run["versions"]["torch"] and run["identity_sha256"]


def test_output_loads_as_imagefolder(augmented_run: Path) -> None:
    import datasets
    import torchvision

    ds = datasets.load_dataset("imagefolder", data_dir=str(augmented_run), split="train")
    assert len(ds) == 12 and set(ds["label"]) == {"cat", "golden_retriever"}
    assert ds[0]["image"].size == (32, 32) and "prompt" in ds.column_names
    folder = torchvision.datasets.ImageFolder(str(augmented_run))
    assert folder.classes == ["cat", "golden_retriever"] and len(folder) == 12


def test_rerun_skips_finished_work(augmented_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(augmented_run, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    manifest = (out / "metadata.jsonl").read_bytes()
    input_dir = json.loads((out / "run.json").read_text())["config"]["input_dir"]
    summary = augment(input_dir, out, multiplier=2, cache_dir=cache_dir, **FAST)
    assert (summary.generated, summary.already_done, summary.total_images) == (0, 12, 12)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    assert (out / "metadata.jsonl").read_bytes() == manifest
    # raising the multiplier is a different run: refused unless --overwrite
    with pytest.raises(SgidError, match="different settings \\(multiplier\\)"):
        augment(input_dir, out, multiplier=3, cache_dir=cache_dir, **FAST)
    summary = augment(input_dir, out, multiplier=1, overwrite=True, cache_dir=cache_dir, **FAST)
    assert (summary.generated, summary.total_images) == (6, 6)
    assert len(list(out.rglob("*.png"))) == 6


def test_foreign_non_empty_out_is_refused(image_folder: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(SgidError, match="holds no sgid run"):
            augment(image_folder, out, cache_dir=cache_dir, overwrite=overwrite, **FAST)
    assert (out / "precious.txt").read_text() == "keep me"
    with pytest.raises(SgidError, match="inside the input folder"):
        augment(image_folder, image_folder / "cat" / "out", cache_dir=cache_dir, **FAST)


def test_caption_cache_is_reused_across_generation_settings(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 2}, seed=7)
    augment(source, tmp_path / "first", noise=0.5, cache_dir=cache_dir, **FAST)

    def no_captioning(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("captions should come from the cache")

    monkeypatch.setattr("sgid.stages.caption.Captioner.__call__", no_captioning)
    augment(source, tmp_path / "second", noise=0.3, prompt="caption", label_weight=2.0, cache_dir=cache_dir, **FAST)
    first, second = rows(tmp_path / "first"), rows(tmp_path / "second")
    assert [r["captions"] for r in first] == [r["captions"] for r in second]
    assert [r["noise_rate"] for r in second] == [0.3, 0.3]
    with pytest.raises(AssertionError, match="from the cache"):  # a new seed is a new cache key
        augment(source, tmp_path / "third", seed=1, cache_dir=cache_dir, **FAST)


#: a value other than the default for every decoding setting of the captioner
CHANGED_DECODING = {
    "beam_captions": 3,
    "num_beams": 12,
    "nucleus_captions": 3,
    "top_p": 0.5,
    "top_k": 5,
    "min_length": 3,
    "max_length": 9,
    "repetition_penalty": 1.3,
}


def test_every_decoding_setting_reaches_the_captioner_past_the_cache(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from sgid.stages.caption import Captioner, CaptionSettings

    assert set(CHANGED_DECODING) == {f.name for f in dataclasses.fields(CaptionSettings)}
    source = make_image_folder(tmp_path / "in", {"a": 1}, seed=11)
    used: list[CaptionSettings] = []
    real = Captioner.__call__

    def recording(self, images, seeds):  # type: ignore[no-untyped-def]
        used.append(self.settings)
        return real(self, images, seeds)

    monkeypatch.setattr(Captioner, "__call__", recording)
    options = {**FAST, "steps": 1, "prompt": "label", "cache_dir": cache_dir}  # int(1 x 0.5) = 0 steps: VAE only
    augment(source, tmp_path / "defaults", **options)
    assert len(used) == 1
    for name, value in CHANGED_DECODING.items():
        used.clear()
        augment(source, tmp_path / name, **options, **{name: value})
        assert [getattr(s, name) for s in used] == [value], f"--{name} did not reach the captioner (cache hit)"
        row = rows(tmp_path / name)[0]
        assert len(row["captions"]) == {"beam_captions": 3 + 10, "nucleus_captions": 10 + 3}.get(name, 20)


def test_bad_inputs_are_listed_and_never_stop_the_run(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 2})
    (source / "cat" / "empty.png").write_bytes(b"")
    (source / "cat" / "text.jpg").write_text("not an image")
    (source / "cat" / "readme.md").write_text("notes")
    (source / "cat" / "dot.png").write_bytes(_png(Image.new("RGB", (1, 1))))
    good = noise_image(3, (40, 40))
    good.convert("CMYK").save(source / "cat" / "cmyk.jpg")
    good.convert("L").save(source / "cat" / "gray.png")
    data = _png(noise_image(4, (64, 64)))
    (source / "cat" / "truncated.png").write_bytes(data[: len(data) // 2])
    summary = augment(source, tmp_path / "out", cache_dir=cache_dir, **FAST)
    errors = {
        e["source"]: e["reason"] for e in map(json.loads, (tmp_path / "out" / "errors.jsonl").read_text().splitlines())
    }
    assert set(errors) == {"cat/empty.png", "cat/text.jpg", "cat/readme.md", "cat/dot.png", "cat/truncated.png"}
    assert "empty" in errors["cat/empty.png"] and "too small" in errors["cat/dot.png"]
    assert {r["source"] for r in rows(tmp_path / "out")} == {"cat/0.png", "cat/1.png", "cat/cmyk.jpg", "cat/gray.png"}
    assert (summary.generated, summary.failed) == (4, 5)


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_small_images_are_generated_at_model_size_and_saved_at_original_size(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"a": 1}, size=(16, 12))
    augment(source, tmp_path / "orig", cache_dir=cache_dir, **FAST)
    row = rows(tmp_path / "orig")[0]
    assert (row["width"], row["height"]) == (16, 12)
    assert (row["generation_width"], row["generation_height"]) == (42, 32)  # tiny SD: 32 px, aspect kept
    assert Image.open(tmp_path / "orig" / row["file_name"]).size == (16, 12)
    augment(source, tmp_path / "gen", keep_generation_size=True, cache_dir=cache_dir, **FAST)
    assert Image.open(tmp_path / "gen" / rows(tmp_path / "gen")[0]["file_name"]).size == (42, 32)


def test_include_originals_and_label_names(tmp_path: Path, cache_dir: Path) -> None:
    import datasets

    source = make_image_folder(tmp_path / "in", {"n01": 2, "n02": 1})
    names = tmp_path / "names.csv"
    names.write_text("n01,tench\nn02,goldfish\n")
    augment(source, tmp_path / "out", include_originals=True, label_names=names, cache_dir=cache_dir, **FAST)
    manifest = rows(tmp_path / "out")
    originals = [r for r in manifest if r["method"] == "original"]
    assert len(originals) == 3 and len(manifest) == 6
    for row in originals:
        assert (tmp_path / "out" / row["file_name"]).read_bytes() == (source / row["source"]).read_bytes()
    assert {r["prompt"].split(",")[0] for r in manifest if r["method"] == "sgid"} == {
        "A picture of a tench",
        "A picture of a goldfish",
    }
    assert len(datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "out"), split="train")) == 6


def test_safety_checker_flags_are_recorded_not_kept(tmp_path: Path, cache_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    import torch

    from sgid.models.loading import load_sd_pipeline

    pipe = load_sd_pipeline(tiny.generator, "img2img", torch.device("cpu"), torch.float32, True)
    weights = pipe.safety_checker.concept_embeds_weights
    saved = weights.detach().clone()
    with torch.no_grad():
        weights.fill_(-10.0)  # every image now scores above every concept threshold
    try:
        source = make_image_folder(tmp_path / "in", {"a": 2})
        summary = augment(source, tmp_path / "out", safety_checker=True, cache_dir=cache_dir, **FAST)
    finally:
        with torch.no_grad():
            weights.copy_(saved)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [(e["source"], e["k"]) for e in errors] == [("a/0.png", 0), ("a/1.png", 0)]
    assert all("safety checker" in e["reason"] for e in errors)
    assert summary.generated == 0 and rows(tmp_path / "out") == [] and not list((tmp_path / "out").rglob("*.png"))


def test_prompt_modes_and_constant_guidance(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"fox": 1})
    augment(
        source, tmp_path / "label", prompt="label", guidance="7.5", prompt_weighting=False, cache_dir=cache_dir, **FAST
    )
    row = rows(tmp_path / "label")[0]
    assert row["prompt"] == "A picture of a fox" and row["guidance_scale"] == 7.5
    assert (row["label_weight"], row["caption_weight"]) == (1.0, 1.0)
    augment(source, tmp_path / "none", prompt="none", guidance=3, cache_dir=cache_dir, **FAST)
    row = rows(tmp_path / "none")[0]
    assert row["prompt"] == "" and row["caption"] is None and row["captions"] == []  # no captioning needed


def test_cli_runs_and_prints_a_summary(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "augment",
            str(image_folder),
            "--out",
            str(tmp_path / "out"),
            "--models",
            "tiny",
            "--steps",
            "4",
            "--caption",
            "nucleus",
            "--preset",
            "cifar100",
            "-k",
            "1",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "random-weight" in err and "generated 6" in err
    assert all(r["caption_strategy"] == "nucleus" for r in rows(tmp_path / "out"))
