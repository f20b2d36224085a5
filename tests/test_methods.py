"""The other generative methods behind `sgid augment --method`: same manifest, seeds, batching, restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, make_image_folder, noise_image
from sgid.config import AugmentConfig
from sgid.errors import SgidError
from sgid.pipeline import Augmenter, augment
from sgid.retrieval import Query, assign, near_duplicates


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def assert_reaches_evaluate(out: Path, train: Path) -> None:
    """`sgid evaluate --generated OUT --train TRAIN` reads every generated image and links it to its source."""
    from sgid.evaluate.data import linked_generated, read_generated, read_image_folder

    classes, real = read_image_folder(train)
    generated = read_generated(out, classes)
    assert len(generated) == len(rows(out)) > 0
    assert linked_generated(generated, real) == generated


@pytest.fixture
def two_by_two(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "in", {"cat": 2, "dog": 2}, size=(24, 20))


def test_text2img_uses_no_source_pixels(tmp_path: Path, cache_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = make_image_folder(tmp_path / "a", {"cat": 2, "dog": 1}, seed=1)
    b = make_image_folder(tmp_path / "b", {"cat": 2, "dog": 1}, seed=2)  # same names and sizes, other pixels
    augment(a, tmp_path / "out-a", method="text2img", multiplier=2, cache_dir=cache_dir, **{**FAST, "quiet": False})
    # the fallback is said once, and recorded in run.json and every row (issue 10, point 4)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("text2img: no --text-model")]
    assert len(notes) == 1 and "variant 'templates'" in notes[0]
    assert json.loads((tmp_path / "out-a" / "run.json").read_text())["variant"] == "templates"
    augment(b, tmp_path / "out-b", method="text2img", multiplier=2, cache_dir=cache_dir, **FAST)
    assert pngs(tmp_path / "out-a") == pngs(tmp_path / "out-b")
    manifest = rows(tmp_path / "out-a")
    assert len(manifest) == 6
    for row in manifest:
        assert row["method"] == "text2img" and row["uses_source_pixels"] is False
        assert row["sentence_source"] == "template" and row["label_text"] in row["prompt"]
        assert row["variant"] == "templates"
        assert row["guidance_scale"] == 7.5 and row["noise_rate"] is None and row["captions"] == []


def tiny_pipe_and_prompts(tiny, kind: str, texts: list[str]):  # type: ignore[no-untyped-def]
    """The tiny pipeline of ``kind`` and ``texts`` encoded by its own text encoder, with as many empty negatives."""
    from sgid.models.loading import load_sd_pipeline
    from sgid.stages.prompt import PromptEncoder

    ref = tiny.instruct if kind == "instruct" else tiny.generator
    pipe = load_sd_pipeline(ref, kind, torch.device("cpu"), torch.float32, False)
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    return pipe, encoder.encode_texts(texts), encoder.encode_texts([""] * len(texts))


def assert_same_pixels(ours: list[Image.Image], theirs: list[Image.Image]) -> None:
    for x, y in zip(ours, theirs, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_text2img_generator_equals_diffusers_pipeline(tiny) -> None:  # type: ignore[no-untyped-def]
    from sgid.seeding import generator
    from sgid.stages.generate import Text2ImgGenerator

    pipe, embeds, negative = tiny_pipe_and_prompts(tiny, "text2img", ["a photo of a cat", "a photo of a dog"])
    ours = Text2ImgGenerator(pipe)(
        None, embeds, negative, [4.0, 4.0], strength=None, steps=5, seeds=[1, 2], size=(32, 32)
    )
    theirs = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=5,
        guidance_scale=4.0,
        height=32,
        width=32,
        generator=[generator(1), generator(2)],
    ).images
    assert_same_pixels(ours.images, theirs)


def test_instruct_pix2pix_generator_equals_diffusers_pipeline(tiny) -> None:  # type: ignore[no-untyped-def]
    from sgid.seeding import generator
    from sgid.stages.generate import InstructPix2PixGenerator

    pipe, embeds, negative = tiny_pipe_and_prompts(tiny, "instruct", ["make it snowy", "put it at night"])
    images = [noise_image(1, (32, 32)), noise_image(2, (32, 32))]
    ours = InstructPix2PixGenerator(pipe, image_guidance=2.5)(
        images, embeds, negative, [5.0, 5.0], strength=None, steps=3, seeds=[1, 2]
    )
    theirs = pipe(
        image=images,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_inference_steps=3,
        guidance_scale=5.0,
        image_guidance_scale=2.5,
        generator=[generator(1), generator(2)],
    ).images
    assert_same_pixels(ours.images, theirs)


def test_text2img_language_model_sentences(two_by_two: Path, tmp_path: Path, cache_dir: Path) -> None:
    for name in ("one", "two"):
        augment(
            two_by_two,
            tmp_path / name,
            method="text2img",
            text_model="tiny:lm",
            sentences=3,
            cache_dir=cache_dir,
            **FAST,
        )
    manifest = rows(tmp_path / "one")
    assert manifest == rows(tmp_path / "two")  # sentences are seeded per label
    assert json.loads((tmp_path / "one" / "run.json").read_text())["variant"] == "lm"
    for row in manifest:
        assert row["sentence_source"] == "language_model" and row["variant"] == "lm"
        assert row["prompt"].startswith(f"a photo of a {row['label_text']}, ")


def test_diverse_captions_never_come_from_the_image_itself(tmp_path: Path, cache_dir: Path) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 3, "dog": 2, "fox": 1})
    augment(
        source, tmp_path / "out", method="diverse_caption", caption="nucleus", multiplier=3, cache_dir=cache_dir, **FAST
    )
    manifest = rows(tmp_path / "out")
    captions_of = {r["source"]: {c["text"] for c in r["captions"] if c["strategy"] == "nucleus"} for r in manifest}
    assert len(manifest) == (3 + 2) * 3
    for row in manifest:
        lender = row["caption_source"]
        assert row["variant"] == "borrowed"
        assert lender != row["source"] and lender.split("/")[0] == row["label"]
        assert row["caption"] in captions_of[lender]
        assert row["prompt"] == f"A picture of a {row['label_text']}, {row['caption']}"
        s = row["similarity"]  # g = f(s) = -4s^2 + 2s + 1, the paper's map, written out; applied with the floor 0
        assert isinstance(s, float) and row["guidance_raw"] == pytest.approx(-4 * s * s + 2 * s + 1, abs=1e-12)
        assert row["guidance_scale"] == max(row["guidance_raw"], 0.0)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["variant"] == "borrowed"
    fox = [e for e in errors(tmp_path / "out") if e["source"] == "fox/0.png"]
    assert len(fox) == 3 and all("no other image of label 'fox'" in e["reason"] for e in fox)


def test_diverse_caption_summaries(two_by_two: Path, tmp_path: Path, cache_dir: Path) -> None:
    augment(
        two_by_two,
        tmp_path / "out",
        method="diverse_caption",
        summarize=True,
        text_model="tiny:lm",
        sentences=2,
        cache_dir=cache_dir,
        **FAST,
    )
    assert {(r["caption_source"], r["variant"]) for r in rows(tmp_path / "out")} == {("summary", "summarised")}
    assert json.loads((tmp_path / "out" / "run.json").read_text())["variant"] == "summarised"


def test_instruct_pix2pix(two_by_two: Path, tmp_path: Path, cache_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    from sgid.models.loading import load_sd_pipeline
    from sgid.stages.generate import InstructPix2PixGenerator

    augment(
        two_by_two,
        tmp_path / "out",
        method="instruct_pix2pix",
        instruction=None,
        instructions=("make it snowy", "put it at night"),
        image_guidance=1.2,
        cache_dir=cache_dir,
        **FAST,
    )
    manifest = rows(tmp_path / "out")
    assert len(manifest) == 4
    for row in manifest:
        assert row["instruction"] in ("make it snowy", "put it at night") and row["prompt"] == row["instruction"]
        assert row["variant"] == row["instruction_source"] == "given"
        assert (row["text_guidance_scale"], row["image_guidance_scale"]) == (7.5, 1.2)
        assert row["generator_model"] == "tiny:pix2pix"
        assert Image.open(tmp_path / "out" / row["file_name"]).size == (24, 20)
    pipe = load_sd_pipeline(tiny.instruct, "instruct", torch.device("cpu"), torch.float32, False)
    assert pipe.unet.config.in_channels == 8
    assert InstructPix2PixGenerator(pipe).resolution == 32


def test_boomerang(two_by_two: Path, tmp_path: Path, cache_dir: Path) -> None:
    augment(two_by_two, tmp_path / "empty", method="boomerang", cache_dir=cache_dir, **FAST)
    row = rows(tmp_path / "empty")[0]
    assert (row["noise_rate"], row["prompt"], row["guidance_scale"], row["caption"]) == (0.2, "", 1.0, None)
    augment(
        two_by_two,
        tmp_path / "label",
        method="boomerang",
        boomerang_prompt="label",
        noise=0.1,
        cache_dir=cache_dir,
        **FAST,
    )
    row = rows(tmp_path / "label")[0]
    assert (row["noise_rate"], row["prompt"]) == (0.1, "A picture of a cat")


def test_method_specific_validation(two_by_two: Path, tmp_path: Path) -> None:
    with pytest.raises(SgidError, match="uses no captions"):
        AugmentConfig.build(two_by_two, tmp_path / "o", method="boomerang", guidance="paper")
    with pytest.raises(SgidError, match="needs --pool"):
        AugmentConfig.build(two_by_two, tmp_path / "o", method="retrieval")
    with pytest.raises(SgidError, match="unknown method 'magic'"):
        AugmentConfig.build(two_by_two, tmp_path / "o", method="text2img+magic")
    with pytest.raises(SgidError, match="must contain"):
        AugmentConfig.build(two_by_two, tmp_path / "o", method="text2img", templates=("a photo",))
    with pytest.raises(SgidError, match="--summarize needs --text-model"):
        AugmentConfig.build(two_by_two, tmp_path / "o", method="diverse_caption", summarize=True)


def test_a_chain_checks_every_stage_folder_before_its_first_stage_runs(
    two_by_two: Path, tmp_path: Path, cache_dir: Path
) -> None:
    other = tmp_path / "other"
    augment(two_by_two, other, method="randaugment", cache_dir=cache_dir, **FAST)  # a run of another input
    with pytest.raises(SgidError, match=r"other holds a run with different settings \(.*input_dir"):
        augment(two_by_two, other, method="randaugment+sgid", cache_dir=cache_dir, **FAST)
    assert not (tmp_path / "other.stages").exists()  # the first stage did not run
    (tmp_path / "mine.stages").mkdir()
    (tmp_path / "mine.stages" / "notes.txt").write_text("keep me")
    with pytest.raises(SgidError, match=r"mine.stages holds files that are not sgid's stage runs \(notes.txt\)"):
        augment(two_by_two, tmp_path / "mine", method="randaugment+sgid", cache_dir=cache_dir, **FAST)
    assert [p.name for p in (tmp_path / "mine.stages").iterdir()] == ["notes.txt"]


def test_text2img_then_sgid_keeps_provenance(two_by_two: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "out"
    augment(two_by_two, out, method="text2img+sgid", multiplier=2, cache_dir=cache_dir, **FAST)
    stage = tmp_path / "out.stages" / "1-text2img"
    first = {r["file_name"]: r for r in rows(stage)}
    final = rows(out)
    assert len(first) == 8 and len(final) == 8
    assert_reaches_evaluate(out, two_by_two)  # provenance leads back to the real training images
    for row in final:
        parent = first[row["parent"]]
        assert row["chain"] == ["text2img", "sgid"] and row["method"] == "sgid"
        assert row["source"] == parent["source"] and (two_by_two / row["source"]).is_file()
        assert row["source_sha256"] == parent["source_sha256"] and row["parent_run"] == str(stage.resolve())


def test_chaining_onto_an_existing_run(augmented_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    augment(augmented_run, tmp_path / "again", method="boomerang", cache_dir=cache_dir, **FAST)
    final = rows(tmp_path / "again")
    assert len(final) == 12
    assert all(r["chain"] == ["sgid", "boomerang"] and r["parent"].endswith(".png") for r in final)
    assert {r["source"] for r in final} == {r["source"] for r in rows(augmented_run)}


# -- retrieval ---------------------------------------------------------------------------------------------
def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_assign_returns_planted_nearest_each_pool_image_once() -> None:
    pool = np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0, 1, 0), unit(0, 0.95, 0.05), unit(0.2, 0, 1)])
    queries = [Query("a", unit(1, 0, 0), 2), Query("b", unit(0, 1, 0), 2)]
    result = assign(queries, pool, excluded=np.zeros(5, bool))
    assert [m.pool_index for m in result["a"]] == [0, 1] and [m.rank for m in result["a"]] == [0, 1]
    assert [m.pool_index for m in result["b"]] == [2, 3]
    assert assign(queries[::-1], pool, np.zeros(5, bool)) == result  # the order of the queries does not matter
    excluded = np.array([True, False, False, False, False])
    assert [m.pool_index for m in assign(queries, pool, excluded)["a"]] == [1, 4]
    # a contested image goes to the query it is closer to
    contested = assign([Query("a", unit(1, 0, 0), 1), Query("c", unit(0.9, 0.1, 0), 1)], pool[:2], np.zeros(2, bool))
    assert [m.pool_index for m in contested["a"]] == [0] and [m.pool_index for m in contested["c"]] == [1]


def test_near_duplicates() -> None:
    pool = np.stack([unit(1, 0), unit(1, 0.01), unit(0, 1)])
    train = np.stack([unit(1, 0)])
    flags, neighbour, score = near_duplicates(pool, train, 0.95)
    assert flags.tolist() == [True, True, False] and neighbour.tolist() == [0, 0, 0]
    assert score[0] == pytest.approx(1.0)


class ColourScorer:
    """A stand-in CLIP: an image's embedding is its mean colour, a text's is the colour its label names."""

    COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0)}

    def image_embeddings(self, images):  # type: ignore[no-untyped-def]
        vectors = [np.asarray(im, np.float32).reshape(-1, 3).mean(0) + 1e-3 for im in images]
        return torch.tensor(np.stack([v / np.linalg.norm(v) for v in vectors]))

    def text_embeddings(self, texts):  # type: ignore[no-untyped-def]
        return torch.tensor(np.stack([unit(*self.COLOURS[t.split()[-1]]) for t in texts]))


def solid(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (16, 16), colour)


def test_retrieval_returns_planted_images_and_drops_planted_duplicates(tmp_path: Path, cache_dir: Path) -> None:
    from sgid.stages.bundle import Stages

    train, pool = tmp_path / "train", tmp_path / "pool"
    for folder, name, colour in [("red", "r0", (250, 0, 0)), ("red", "r1", (240, 10, 0)), ("green", "g0", (0, 250, 0))]:
        (train / folder).mkdir(parents=True, exist_ok=True)
        solid(colour).save(train / folder / f"{name}.png")
    pool.mkdir()
    planted = {
        "reddish_a.png": (200, 90, 20),
        "reddish_b.png": (200, 40, 90),
        "greenish.png": (100, 200, 50),
        "blue.png": (0, 0, 255),
        "copy_of_r0.png": (250, 0, 0),
    }
    for name, colour in planted.items():
        solid(colour).save(pool / name)
    stages = Stages(scorer=ColourScorer(), scorer_id="colour")  # type: ignore[arg-type]
    config = AugmentConfig.build(
        train, tmp_path / "out", method="retrieval", pool=pool, quiet=True, cache_dir=cache_dir, caption_cache=False
    )
    Augmenter(config, stages=stages).run()
    manifest = {r["source"]: r for r in rows(tmp_path / "out")}
    assert manifest["green/g0.png"]["pool_path"] == "greenish.png"
    assert {manifest["red/r0.png"]["pool_path"], manifest["red/r1.png"]["pool_path"]} == {
        "reddish_a.png",
        "reddish_b.png",
    }
    for row in manifest.values():
        assert row["query"] == f"a photo of a {row['label_text']}" and 0 < row["score"] <= 1
        assert (tmp_path / "out" / row["file_name"]).read_bytes()
    dropped = [e for e in errors(tmp_path / "out") if e["source"].startswith("pool:")]
    assert [e["source"] for e in dropped] == ["pool:copy_of_r0.png"] and "red/r0.png" in dropped[0]["reason"]


def test_retrieval_exclude_drops_pool_images_near_the_test_set(tmp_path: Path, cache_dir: Path) -> None:
    """--exclude DIR (issue 10, point 6): a pool image that near-duplicates a test image is never retrieved."""
    from sgid.stages.bundle import Stages

    train, pool, test = tmp_path / "train", tmp_path / "pool", tmp_path / "test"
    for folder, name, colour in [("red", "r0", (250, 0, 0)), ("green", "g0", (0, 250, 0))]:
        (train / folder).mkdir(parents=True, exist_ok=True)
        solid(colour).save(train / folder / f"{name}.png")
    (test / "green").mkdir(parents=True)
    solid((100, 200, 50)).save(test / "green" / "t0.png")
    pool.mkdir()
    for name, colour in {
        "reddish.png": (200, 90, 20),
        "greenish.png": (100, 200, 50),
        "teal.png": (0, 150, 150),
    }.items():
        solid(colour).save(pool / name)
    stages = Stages(scorer=ColourScorer(), scorer_id="colour")  # type: ignore[arg-type]
    options = {"method": "retrieval", "pool": pool, "quiet": True, "cache_dir": cache_dir, "caption_cache": False}
    Augmenter(AugmentConfig.build(train, tmp_path / "open", **options), stages=stages).run()
    assert {r["source"]: r["pool_path"] for r in rows(tmp_path / "open")}["green/g0.png"] == "greenish.png"
    config = AugmentConfig.build(train, tmp_path / "out", exclude=[str(test)], **options)
    Augmenter(config, stages=stages).run()
    assert {r["source"]: r["pool_path"] for r in rows(tmp_path / "out")} == {
        "green/g0.png": "teal.png",
        "red/r0.png": "reddish.png",
    }
    (dropped,) = [e for e in errors(tmp_path / "out") if e["source"] == "pool:greenish.png"]
    assert f"near-duplicate of excluded image {test / 'green' / 't0.png'}" in dropped["reason"]
    assert f"--exclude {test}" in dropped["reason"]
    with pytest.raises(SgidError, match="--exclude .* is not a folder"):
        AugmentConfig.build(train, tmp_path / "x", exclude=[str(tmp_path / "nope")], **options)
    with pytest.raises(SgidError, match="--exclude applies to --method retrieval"):
        AugmentConfig.build(train, tmp_path / "x", exclude=[str(test)])


def test_retrieval_with_tiny_clip_end_to_end(two_by_two: Path, tmp_path: Path, cache_dir: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(6):
        noise_image(100 + i, (20, 20)).save(pool / f"p{i}.png")
    shutil.copy(two_by_two / "cat" / "0.png", pool / "copy.png")
    augment(
        two_by_two,
        tmp_path / "out",
        method="retrieval",
        pool=pool,
        retrieval_query="image",
        duplicate_threshold=0.99999,
        cache_dir=cache_dir,
        **FAST,
    )
    manifest = rows(tmp_path / "out")
    assert len(manifest) == 4 and len({r["pool_path"] for r in manifest}) == 4
    assert "copy.png" not in {r["pool_path"] for r in manifest}
    assert any(e["source"] == "pool:copy.png" for e in errors(tmp_path / "out"))
    assert all(Image.open(tmp_path / "out" / r["file_name"]).size == (20, 20) for r in manifest)


def test_a_method_output_trains_in_sgid_evaluate(two_by_two: Path, tmp_path: Path, cache_dir: Path) -> None:
    from sgid.cli import main

    augment(two_by_two, tmp_path / "gen", method="boomerang", cache_dir=cache_dir, **FAST)
    test = shutil.copytree(two_by_two, tmp_path / "test")  # evaluate refuses a test folder that is trained on
    code = main(
        [
            "evaluate",
            "--train",
            str(two_by_two),
            "--test",
            str(test),
            "--generated",
            str(tmp_path / "gen"),
            "--methods",
            "baseline,generated",
            "--backbone",
            "small_cnn",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "eval"),
            "--quiet",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} >= {"baseline", "generated"}
