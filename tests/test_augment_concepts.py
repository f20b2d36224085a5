"""`sgid augment --concepts` and `--lora`: learned tokens in Stable Diffusion prompts, LoRA weights applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, make_image_folder
from sgid.concepts import LoraSettings, TrainSettings, learn_concepts
from sgid.errors import SgidError
from sgid.pipeline import augment


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def folder_and_concepts(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("concept-run")
    source = make_image_folder(root / "in", {"cat": 2, "golden_retriever": 2})
    concepts = root / "concepts"
    learn_concepts(
        source,
        concepts,
        TrainSettings(steps=1, batch_size=1),
        models="tiny",
        cache_dir=cache_dir,
        classes=["cat"],
        quiet=True,
    )
    return source, concepts


def test_concept_tokens_replace_the_label_in_prompts(folder_and_concepts, tmp_path: Path, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    source, concepts = folder_and_concepts
    augment(source, tmp_path / "out", concepts=concepts, cache_dir=cache_dir, **FAST)
    by_label = {r["label"]: r for r in rows(tmp_path / "out")}
    assert by_label["cat"]["prompt"].startswith("A picture of a <sgid-cat>, ")
    assert by_label["cat"]["concept_token"] == "<sgid-cat>" and by_label["cat"]["label_text"] == "cat"
    # a class without a learned concept keeps its label text
    assert by_label["golden_retriever"]["prompt"].startswith("A picture of a golden retriever, ")
    assert by_label["golden_retriever"]["concept_token"] is None
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(run["identity"]["concepts_sha256"]) == 64


def test_concepts_reach_text2img_prompts_but_not_the_cached_pipeline(
    folder_and_concepts, tmp_path: Path, cache_dir: Path, tiny
) -> None:  # type: ignore[no-untyped-def]
    from sgid.models.loading import load_sd_pipeline

    source, concepts = folder_and_concepts
    augment(source, tmp_path / "out", method="text2img", concepts=concepts, cache_dir=cache_dir, **FAST)
    prompts = {r["prompt"] for r in rows(tmp_path / "out") if r["label"] == "cat"}
    assert prompts and all("<sgid-cat>" in p for p in prompts)
    cached = load_sd_pipeline(tiny.generator, "img2img", torch.device("cpu"), torch.float32, False)
    assert "<sgid-cat>" not in cached.tokenizer.get_vocab()


def test_lora_changes_the_generated_images(folder_and_concepts, tmp_path: Path, cache_dir: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model_state_dict

    from sgid.models.loading import load_sd_pipeline

    pipe = load_sd_pipeline(tiny.generator, "img2img", torch.device("cpu"), torch.float32, False, private=True)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v"]))
    lora = tmp_path / "lora"
    type(pipe).save_lora_weights(lora, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    source, _ = folder_and_concepts
    augment(source, tmp_path / "plain", cache_dir=cache_dir, **FAST)
    augment(source, tmp_path / "lora-out", lora=lora, lora_scale=1.0, cache_dir=cache_dir, **FAST)
    plain, adapted = rows(tmp_path / "plain"), rows(tmp_path / "lora-out")
    assert all(r["lora"] == str(lora) and r["lora_scale"] == 1.0 for r in adapted)
    assert [r["seed"] for r in plain] == [r["seed"] for r in adapted]
    differs = [
        (tmp_path / "plain" / a["file_name"]).read_bytes() != (tmp_path / "lora-out" / b["file_name"]).read_bytes()
        for a, b in zip(plain, adapted, strict=True)
    ]
    assert all(differs)


# -- a LoRA concepts folder (sgid learn-concepts --method lora) ------------------------------------------------
@pytest.fixture(scope="module")
def lora_concepts(folder_and_concepts: tuple[Path, Path], cache_dir: Path) -> Path:
    source, concepts = folder_and_concepts
    out = concepts.parent / "lora-concepts"
    settings = LoraSettings(steps=2, samples_per_class=0, learning_rate=5e-2, token_learning_rate=5e-2)
    learn_concepts(source, out, settings, models="tiny", cache_dir=cache_dir, quiet=True)
    return out


def pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_lora_concepts_equal_diffusers_loading_and_change_the_images(  # type: ignore[no-untyped-def]
    folder_and_concepts, lora_concepts: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sgid.concepts import Prepared, concepts_fingerprint, fork_pipeline, load_concepts
    from sgid.concepts.apply import concept_labels
    from sgid.stages import bundle

    source, _ = folder_and_concepts
    options = dict(method="text2img", cache_dir=cache_dir, **FAST)
    augment(source, tmp_path / "plain", **options)
    augment(source, tmp_path / "sgid", concepts=lora_concepts, **options)

    def diffusers_loading(pipe, config) -> Prepared:  # type: ignore[no-untyped-def]
        """The same folder applied by diffusers' own loaders instead of sgid's."""
        forked = fork_pipeline(pipe, ("tokenizer", "text_encoder", "unet"))
        tokens = load_concepts(lora_concepts)
        for class_name, token in tokens.items():
            forked.load_textual_inversion(str(lora_concepts / f"{class_name}.safetensors"), token=token)
        forked.load_lora_weights(str(lora_concepts))
        labels = concept_labels(lora_concepts)
        return Prepared(forked, tokens, None, labels, concepts_fingerprint(lora_concepts))

    monkeypatch.setattr(bundle, "prepare", diffusers_loading)
    augment(source, tmp_path / "diffusers", concepts=lora_concepts, **options)

    sgid_images, diffusers_images = pngs(tmp_path / "sgid"), pngs(tmp_path / "diffusers")
    assert sgid_images and sgid_images == diffusers_images
    plain = pngs(tmp_path / "plain")
    assert plain.keys() == sgid_images.keys() and all(plain[k] != sgid_images[k] for k in plain)


@pytest.mark.parametrize("method", ["sgid", "text2img", "diverse_caption", "boomerang"])
def test_lora_concepts_reach_every_generative_method(  # type: ignore[no-untyped-def]
    method: str, folder_and_concepts, lora_concepts: Path, tmp_path: Path, cache_dir: Path
) -> None:
    from sgid.concepts import concepts_fingerprint

    source, _ = folder_and_concepts
    extra = {"boomerang_prompt": "label"} if method == "boomerang" else {}
    augment(source, tmp_path / "out", method=method, concepts=lora_concepts, cache_dir=cache_dir, **extra, **FAST)
    manifest = rows(tmp_path / "out")
    assert manifest and {r["concepts_sha256"] for r in manifest} == {concepts_fingerprint(lora_concepts)}
    for row in manifest:
        token = "<sgid-cat>" if row["label"] == "cat" else "<sgid-golden_retriever>"
        assert row["concept_token"] == token
        assert f"{token} {row['label_text']}" in row["prompt"]  # the prompt the LoRA was trained with


def test_concept_tokens_never_reach_clip_or_the_language_model(  # type: ignore[no-untyped-def]
    folder_and_concepts, lora_concepts: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sgid.stages.score import ClipScorer
    from sgid.stages.text import TextGenerator

    seen: list[str] = []
    text_embeddings, generate = ClipScorer.text_embeddings, TextGenerator.generate

    def spy_clip(self, texts):  # type: ignore[no-untyped-def]
        seen.extend(texts)
        return text_embeddings(self, texts)

    def spy_lm(self, prompt, n, seed):  # type: ignore[no-untyped-def]
        seen.append(prompt)
        return generate(self, prompt, n, seed)

    monkeypatch.setattr(ClipScorer, "text_embeddings", spy_clip)
    monkeypatch.setattr(TextGenerator, "generate", spy_lm)
    source, _ = folder_and_concepts
    for method, extra in (("sgid", {}), ("diverse_caption", {"summarize": True, "text_model": "tiny:lm"})):
        augment(source, tmp_path / method, method=method, concepts=lora_concepts, cache_dir=cache_dir, **extra, **FAST)
    augment(
        source,
        tmp_path / "t2i",
        method="text2img",
        text_model="tiny:lm",
        concepts=lora_concepts,
        cache_dir=cache_dir,
        **FAST,
    )
    assert seen and not [text for text in seen if "<sgid-" in text]
    assert any("<sgid-cat>" in r["prompt"] for r in rows(tmp_path / "t2i"))


def test_instruct_pix2pix_refuses_a_lora_concepts_folder(  # type: ignore[no-untyped-def]
    folder_and_concepts, lora_concepts: Path, tmp_path: Path, cache_dir: Path
) -> None:
    source, _ = folder_and_concepts
    with pytest.raises(SgidError, match="instruct_pix2pix"):
        augment(
            source, tmp_path / "out", method="instruct_pix2pix", concepts=lora_concepts, cache_dir=cache_dir, **FAST
        )


def test_a_learned_concept_deleted_since_is_an_error_not_the_plain_label(  # type: ignore[no-untyped-def]
    folder_and_concepts, tmp_path: Path, cache_dir: Path, capsys
) -> None:
    """A class concepts.json marks learned whose file is gone would be prompted with its plain label, unsaid."""
    import shutil

    from sgid.cli import main

    source, concepts = folder_and_concepts
    copy = shutil.copytree(concepts, tmp_path / "concepts")
    index = json.loads((copy / "concepts.json").read_text())
    (copy / index["classes"]["cat"]["file"]).unlink()
    args = [
        "augment",
        str(source),
        "--out",
        str(tmp_path / "out"),
        "--concepts",
        str(copy),
        "--models",
        "tiny",
        "--quiet",
    ]
    assert main([*args, "--cache-dir", str(cache_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sgid: error: ") and err.count("\n") == 1
    assert "learned concept file(s) of 1 class(es) are missing or damaged (cat); rerun sgid learn-concepts" in err
    assert not (tmp_path / "out").exists()


def _cut_short(path: Path) -> bytes:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return whole


def test_a_learned_concept_cut_short_is_an_error_and_learning_again_makes_it_whole(  # type: ignore[no-untyped-def]
    folder_and_concepts, tmp_path: Path, cache_dir: Path, capsys
) -> None:
    import shutil

    from sgid.cli import main

    source, concepts = folder_and_concepts
    copy = shutil.copytree(concepts, tmp_path / "concepts")
    embedding = copy / json.loads((copy / "concepts.json").read_text())["classes"]["cat"]["file"]
    whole = _cut_short(embedding)
    args = ["augment", str(source), "--out", str(tmp_path / "out"), "--concepts", str(copy), "--models", "tiny"]
    assert main([*args, "--quiet", "--cache-dir", str(cache_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing or damaged (cat); rerun sgid learn-concepts" in err
    # the rerun of learn-concepts (same settings) learns it again, to the same bytes
    settings = TrainSettings(steps=1, batch_size=1)
    learn_concepts(source, copy, settings, models="tiny", cache_dir=cache_dir, classes=["cat"], quiet=True)
    assert embedding.read_bytes() == whole


def test_lora_weights_cut_short_are_one_line_errors_before_any_model(  # type: ignore[no-untyped-def]
    folder_and_concepts, lora_concepts: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import shutil

    from sgid.cli import main

    def no_models(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sgid.execute.load_stages", no_models)
    source, _ = folder_and_concepts
    copy = shutil.copytree(lora_concepts, tmp_path / "lora-concepts")
    weights = copy / "pytorch_lora_weights.safetensors"
    _cut_short(weights)
    base = ["augment", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", "--quiet"]
    assert main([*base, "--concepts", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read the LoRA weights {weights}: " in err
    assert "rerun sgid learn-concepts with the same options" in err
    assert main([*base, "--lora", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--lora {weights}: cannot read these LoRA weights (" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"file": "ABSOLUTE"}, "class 'cat': file '/.*' must be a relative path inside the folder"),
        ({"file": "../victim/notes.txt"}, "must be a relative path inside the folder"),
        ({"file": 7}, "missing 'file'"),
        ({"status": "DONE"}, 'status "DONE" is neither "done" nor "failed"'),
        ({"token": 5}, "token 5 is not text"),
        ("cat.safetensors", "class 'cat': not an entry sgid learn-concepts writes"),
    ],
)
def test_a_hand_edited_concepts_index_is_one_line_and_never_reaches_outside(  # type: ignore[no-untyped-def]
    folder_and_concepts, tmp_path: Path, cache_dir: Path, capsys, edit, message
) -> None:
    """Found by a hostile-input run: an absolute 'file' made learn-concepts --overwrite delete a user's file
    outside the folder; wrong types were tracebacks; an unknown status fell back to the plain label, unsaid."""
    import re
    import shutil

    from sgid.cli import main

    source, concepts = folder_and_concepts
    copy = shutil.copytree(concepts, tmp_path / "concepts")
    victim = tmp_path / "victim" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    index = json.loads((copy / "concepts.json").read_text())
    if isinstance(edit, dict):
        edit = {k: str(victim) if v == "ABSOLUTE" else v for k, v in edit.items()}
        index["classes"]["cat"].update(edit)
    else:
        index["classes"]["cat"] = edit
    (copy / "concepts.json").write_text(json.dumps(index))
    common = ["--models", "tiny", "--quiet", "--cache-dir", str(cache_dir)]
    for args in (
        ["augment", str(source), "--out", str(tmp_path / "out"), "--concepts", str(copy)],
        ["learn-concepts", str(source), "--out", str(copy), "--steps", "1", "--overwrite"],
    ):
        assert main([*args, *common]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(message, err), err
    assert victim.read_text() == "precious" and (copy / "concepts.json").is_file()
