"""Learned concepts: textual inversion per class (``sgid learn-concepts``) and LoRA loading, offline on the tiny model.

Training steps are the expensive part (about a second each on a busy CPU), so the tests share one finished
two-class run (``learned``) and otherwise take one to three steps at batch size 1.
"""

from __future__ import annotations

import doctest
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import sgid.concepts.tokens
from concept_helpers import count_steps, learned_folder
from conftest import CPU, make_image_folder, noise_image
from sgid.cli import main
from sgid.concepts import (
    ConceptTrainer,
    DiffusionParts,
    TrainSettings,
    TrainState,
    apply_concepts,
    apply_lora,
    fork_pipeline,
    learn_concepts,
    load_concepts,
    prepare_pipeline,
)
from sgid.concepts.data import ConceptImages
from sgid.concepts.store import ConceptsDir
from sgid.concepts.tokens import choose_init_token, concept_tokens
from sgid.errors import MissingDependencyError, RunDirError, SgidError

FAST = TrainSettings(steps=2, batch_size=1, checkpoint_every=1)


# -- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(tiny: Any) -> Any:
    """A private tiny img2img pipeline for this module; tests fork it before changing anything."""
    from sgid.models.loading import load_sd_pipeline

    return load_sd_pipeline(tiny.generator, "img2img", CPU, torch.float32, False, private=True)


def fresh_parts(pipe: Any) -> DiffusionParts:
    """Training parts with their own tokenizer and text encoder (the trainer adds a token to both)."""
    return DiffusionParts.from_pipeline(fork_pipeline(pipe, ("tokenizer", "text_encoder")))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cat: 2 images + 1 unreadable file; golden_retriever: 1 image; zebra: nothing readable."""
    root = make_image_folder(tmp_path_factory.mktemp("concepts-input") / "input", {"cat": 2, "golden_retriever": 1})
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    (root / "zebra").mkdir()
    (root / "zebra" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, dataset: Path, cache_dir: Path) -> Path:
    """One finished run over both classes, shared read-only (tests copy it before changing it)."""
    return learned_folder(tmp_path_factory, "concepts-run", dataset, FAST, cache_dir)


def read_index(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "concepts.json").read_text())


def make_image(seed: int) -> Any:
    return noise_image(seed, (40, 32))  # not square: the random crop has room to move


# -- tokens ---------------------------------------------------------------------------------------------------
def test_token_names_and_init_token_rule(pipe: Any) -> None:
    assert doctest.testmod(sgid.concepts.tokens).failed == 0
    assert concept_tokens(["golden_retriever", "Cat", "cat"]) == {
        "Cat": "<sgid-cat>",
        "cat": "<sgid-cat-2>",
        "golden_retriever": "<sgid-golden_retriever>",
    }
    tokenizer = pipe.tokenizer  # tiny vocabulary: "dog" and "the" are one token; "retriever", "object" are not
    assert choose_init_token(tokenizer, "hot dog") == "dog"
    assert choose_init_token(tokenizer, "golden retriever") == "the"
    assert choose_init_token(tokenizer, "golden retriever", explicit="dog") == "dog"
    with pytest.raises(SgidError, match="single token"):
        choose_init_token(tokenizer, "cat", explicit="retriever")


# -- the training step ----------------------------------------------------------------------------------------
def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def input_embeddings_name(text_encoder: Any) -> str:
    weight = text_encoder.get_input_embeddings().weight
    return next(name for name, value in text_encoder.named_parameters() if value is weight)


def test_one_step_changes_only_the_new_tokens_embedding(pipe: Any) -> None:
    parts = fresh_parts(pipe)
    encoder_before, unet_before, vae_before = snapshot(parts.text_encoder), snapshot(parts.unet), snapshot(parts.vae)
    vocabulary = len(parts.tokenizer)
    data = ConceptImages([make_image(1), make_image(2)], 32, parts.tokenizer, "<sgid-cat>", seed=0, key="cat")
    trainer = ConceptTrainer(parts, data, token="<sgid-cat>", init_token="the", settings=FAST, key="cat")
    table = input_embeddings_name(parts.text_encoder)
    table_before = encoder_before[table]
    (the_id,) = parts.tokenizer.encode("the", add_special_tokens=False)
    the_row = table_before[the_id]
    start = trainer.embedding()
    assert torch.equal(start[0], the_row)  # initialised from the init token

    loss = trainer.step()

    assert loss > 0 and trainer.step_done == 1
    after = snapshot(parts.text_encoder)
    embeddings, old_embeddings = after.pop(table), encoder_before.pop(table)
    assert trainer.token_id == vocabulary and embeddings.shape[0] == vocabulary + 1
    assert torch.equal(embeddings[:vocabulary], old_embeddings)  # every existing row, bit for bit
    assert not torch.equal(embeddings[vocabulary], start[0])  # the new row learned something
    assert torch.equal(embeddings[vocabulary], trainer.embedding()[0])
    assert after.keys() == encoder_before.keys()
    assert all(torch.equal(after[name], encoder_before[name]) for name in after)
    assert all(torch.equal(value, unet_before[name]) for name, value in snapshot(parts.unet).items())
    assert all(torch.equal(value, vae_before[name]) for name, value in snapshot(parts.vae).items())
    assert [p for p in parts.unet.parameters() if p.grad is not None] == []


def test_batches_are_a_function_of_the_step(pipe: Any) -> None:
    data = ConceptImages([make_image(i) for i in range(3)], 32, pipe.tokenizer, "<sgid-x>", seed=5, key="x")
    first, again = data.batch(7, 2), data.batch(7, 2)
    assert torch.equal(first.pixel_values, again.pixel_values) and first.prompts == again.prompts
    assert first.pixel_values.shape == (2, 3, 32, 32) and float(first.pixel_values.abs().max()) <= 1.0
    assert all("<sgid-x>" in prompt for prompt in first.prompts)
    # each epoch (3 consecutive positions at batch size 1) visits every image once
    assert sorted(data.indices(3, 1) + data.indices(4, 1) + data.indices(5, 1)) == [0, 1, 2]


# -- the concepts directory -----------------------------------------------------------------------------------
def test_run_writes_index_and_loadable_embeddings(learned: Path, pipe: Any) -> None:
    index = read_index(learned)
    cat = index["classes"]["cat"]
    assert index["model"] == "tiny:sd" and index["text_encoder_width"] == 32 and index["resolution"] == 32
    assert cat["status"] == "done" and cat["steps_done"] == 2 and cat["images"] == 2 and cat["init_token"] == "the"
    assert [skip["file"] for skip in cat["skipped_images"]] == ["cat/broken.png"]
    assert not (learned / "checkpoints").exists()
    zebra = index["classes"]["zebra"]
    assert zebra["status"] == "failed" and zebra["skipped_images"][0]["reason"] == "empty file (0 bytes)"
    assert not (learned / "zebra.safetensors").exists()
    assert load_concepts(learned) == {"cat": "<sgid-cat>", "golden_retriever": "<sgid-golden_retriever>"}

    fresh = fork_pipeline(pipe)
    assert apply_concepts(fresh, learned) == load_concepts(learned)
    table = fresh.text_encoder.get_input_embeddings()
    for class_name, token in load_concepts(learned).items():
        saved = load_file(learned / f"{class_name}.safetensors")
        assert list(saved) == [token] and saved[token].shape == (1, 32)
        ids = fresh.tokenizer(f"A picture of a {token}, a dog").input_ids
        token_id = fresh.tokenizer.convert_tokens_to_ids(token)
        assert ids.count(token_id) == 1  # one token, not word pieces
        assert torch.equal(table(torch.tensor([token_id]))[0], saved[token][0])
    assert apply_concepts(fresh, learned)  # applying again is a no-op, not an error
    assert len(pipe.tokenizer) == len(fresh.tokenizer) - 2  # the forked-from pipeline is untouched

    # and diffusers' own loader reads the files as they are
    other = fork_pipeline(pipe)
    other.load_textual_inversion(str(learned / "cat.safetensors"), token="<sgid-cat>")
    cat_id = other.tokenizer.convert_tokens_to_ids("<sgid-cat>")
    expected = load_file(learned / "cat.safetensors")["<sgid-cat>"][0]
    assert torch.equal(other.text_encoder.get_input_embeddings().weight[cat_id], expected)


def test_resume_after_interruption_equals_uninterrupted_run(
    learned: Path, dataset: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "concepts"
    settings = FAST  # 2 steps, a checkpoint after every step
    count_steps(monkeypatch, ConceptTrainer, fail_at=2)  # killed during the second step
    with pytest.raises(KeyboardInterrupt, match="test: interrupted at step 2"):
        learn_concepts(dataset, out, settings, models="tiny", cache_dir=cache_dir, classes=["cat"], quiet=True)
    assert (out / "checkpoints" / "cat.safetensors").is_file()
    assert not (out / "cat.safetensors").exists() and "cat" not in read_index(out)["classes"]

    monkeypatch.undo()
    calls = count_steps(monkeypatch, ConceptTrainer)
    learn_concepts(dataset, out, settings, models="tiny", cache_dir=cache_dir, classes=["cat"], quiet=True)

    assert calls == [1]  # only the step after the checkpoint was redone
    resumed, uninterrupted = load_file(out / "cat.safetensors"), load_file(learned / "cat.safetensors")
    assert torch.equal(resumed["<sgid-cat>"], uninterrupted["<sgid-cat>"])
    assert not (out / "checkpoints").exists()


def test_finished_classes_are_skipped_on_rerun(
    learned: Path, dataset: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "concepts"
    shutil.copytree(learned, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.safetensors")}
    calls = count_steps(monkeypatch, ConceptTrainer)

    summary = learn_concepts(dataset, out, FAST, models="tiny", cache_dir=cache_dir, quiet=True)

    assert calls == [] and (summary.trained, summary.already_done, summary.failed) == (0, 2, 1)  # zebra is tried again
    assert {p.name: p.read_bytes() for p in out.glob("*.safetensors")} == before


def test_other_settings_are_refused_unless_overwrite(
    learned: Path, dataset: Path, cache_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "concepts"
    shutil.copytree(learned, out)
    other = TrainSettings(steps=1, batch_size=1)
    with pytest.raises(RunDirError, match="different settings.*steps"):
        learn_concepts(dataset, out, other, models="tiny", cache_dir=cache_dir, quiet=True)

    options: dict[str, Any] = {"models": "tiny", "cache_dir": cache_dir, "quiet": True}
    learn_concepts(dataset, out, other, classes=["golden_retriever"], overwrite=True, **options)
    index = read_index(out)
    assert index["identity"]["steps"] == 1 and list(index["classes"]) == ["golden_retriever"]
    assert not (out / "cat.safetensors").exists()  # the earlier run's files are gone

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        learn_concepts(dataset, foreign, other, models="tiny", cache_dir=cache_dir, quiet=True, overwrite=True)


def test_checkpoints_round_trip_and_foreign_ones_are_ignored(tmp_path: Path) -> None:
    store = ConceptsDir(tmp_path / "concepts", {"model": "m"})
    optimizer = {"step": torch.tensor(3.0), "exp_avg": torch.randn(1, 8), "exp_avg_sq": torch.rand(1, 8)}
    state = TrainState(3, torch.randn(1, 8), optimizer, 0.25)
    key = {"token": "<sgid-cat>", "images_sha256": "abc"}
    with store.session({}):
        store.save_checkpoint("cat", state, key)
        back = store.load_checkpoint("cat", key, TrainState.from_tensors)
        assert back is not None and (back.step, back.loss) == (3, 0.25)
        assert torch.equal(back.embedding, state.embedding)
        assert back.optimizer.keys() == optimizer.keys()
        assert all(torch.equal(back.optimizer[name], value) for name, value in optimizer.items())
        assert store.load_checkpoint("cat", dict(key, images_sha256="other images"), TrainState.from_tensors) is None
        (tmp_path / "concepts" / "checkpoints" / "cat.safetensors").write_bytes(b"torn")
        assert store.load_checkpoint("cat", key, TrainState.from_tensors) is None
        with pytest.raises(RunDirError, match="another sgid run"):
            ConceptsDir(tmp_path / "concepts", {"model": "m"}).open({})


def test_apply_concepts_refuses_foreign_dirs_and_other_widths(learned: Path, pipe: Any, tmp_path: Path) -> None:
    with pytest.raises(SgidError, match="not a concepts directory"):
        apply_concepts(fork_pipeline(pipe), tmp_path)
    wide = tmp_path / "wide"
    shutil.copytree(learned, wide)
    save_file({"<sgid-cat>": torch.zeros(1, 768)}, str(wide / "cat.safetensors"))
    with pytest.raises(SgidError, match="width 768.*width 32"):
        apply_concepts(fork_pipeline(pipe), wide)


# -- LoRA -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_dir(pipe: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRA weights for the tiny UNet's attention projections, random (so not a no-op), saved by diffusers."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = fork_pipeline(pipe, ("unet",)).unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v"]))
    folder = tmp_path_factory.mktemp("lora")
    type(pipe).save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    return folder


def unet_output(pipe: Any) -> torch.Tensor:
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return pipe.unet(latents, 10, hidden).sample  # type: ignore[no-any-return]


def test_lora_loads_and_changes_the_unet(pipe: Any, lora_dir: Path) -> None:
    base = unet_output(pipe)
    prepared = prepare_pipeline(pipe, lora=lora_dir)
    assert prepared.adapter is not None
    assert not torch.allclose(unet_output(prepared.pipe), base, atol=1e-4)
    assert torch.equal(unet_output(pipe), base)  # the pipeline it was forked from is untouched

    at_zero = fork_pipeline(pipe, ("tokenizer", "text_encoder", "unet"))
    apply_lora(at_zero, lora_dir / "pytorch_lora_weights.safetensors", scale=0.0)  # a file works as well as a folder
    assert torch.allclose(unet_output(at_zero), base, atol=1e-6)  # the scale is applied


def test_lora_that_does_not_fit_is_a_clear_error(
    pipe: Any, lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = load_file(lora_dir / "pytorch_lora_weights.safetensors")
    wrong = {name: torch.zeros(t.shape[0], t.shape[1] + 3) if "lora_A" in name else t for name, t in weights.items()}
    save_file(wrong, str(tmp_path / "wrong_shape.safetensors"))
    save_file({"foo.weight": torch.zeros(3)}, str(tmp_path / "not_lora.safetensors"))
    (tmp_path / "lora.bin").write_bytes(b"pickle")
    cases = {
        "wrong_shape.safetensors": "do not fit",
        "not_lora.safetensors": "do not fit",
        "lora.bin": "only .safetensors",
        "missing.safetensors": "no such file",
    }
    for name, message in cases.items():
        with pytest.raises(SgidError, match=message):
            apply_lora(fork_pipeline(pipe, ("unet", "text_encoder")), tmp_path / name)

    forked = fork_pipeline(pipe, ("unet",))
    monkeypatch.setitem(sys.modules, "peft", None)  # as if the concepts extra were not installed
    with pytest.raises(MissingDependencyError, match=r"sgid\[concepts\]"):
        apply_lora(forked, lora_dir)


# -- command line ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "input folder not found"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--classes", "cat,unicorn"], "not in the input: unicorn"),
        (["--learning-rate", "nan"], "--learning-rate must be a positive number"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    extra: list[str],
    message: str,
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    forbid_model_loading: list[str],
) -> None:
    source = tmp_path / "missing" if not extra else dataset
    code = main(["learn-concepts", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sgid: error:") and message in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_cli_without_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["learn-concepts", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required" in err


def test_cli_learns_with_progress_and_loss(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "concepts"
    args = ["learn-concepts", str(dataset), "--out", str(out), "--models", "tiny", "--steps", "1"]
    assert main([*args, "--batch-size", "1", "--classes", "golden_retriever"]) == 0
    err = capsys.readouterr().err
    assert "loss" in err and "learned 1, skipped 0 already done, failed 0" in err
    assert load_concepts(out) == {"golden_retriever": "<sgid-golden_retriever>"}
