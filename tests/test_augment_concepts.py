"""`sgid augment --concepts` and `--lora`: learned tokens in Stable Diffusion prompts, LoRA weights applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, make_image_folder
from sgid.concepts import TrainSettings, learn_concepts
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
