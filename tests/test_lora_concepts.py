"""`sgid learn-concepts --method lora`: DreamBooth-LoRA with one token per class, offline on the tiny model.

Training steps are the expensive part, so the tests share one finished four-step run with prior preservation
(``learned``) and otherwise take one to a few steps at batch size 1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from concept_helpers import count_steps, learned_folder
from conftest import CPU, make_image_folder, noise_image
from sgid.cli import main
from sgid.concepts import (
    CONCEPT_METHODS,
    DiffusionParts,
    LoraSettings,
    LoraTrainer,
    fork_pipeline,
    learn_concepts,
    load_concepts,
)
from sgid.concepts.apply import apply_lora, concept_labels, concepts_lora
from sgid.concepts.data import ConceptImages, JointImages
from sgid.concepts.trainer import noise_prediction
from sgid.errors import RunDirError
from sgid.seeding import generator

FAST = LoraSettings(
    steps=4, checkpoint_every=2, prior_images=2, prior_steps=2, samples_per_class=1, sample_steps=2, alpha=8.0
)


# -- fixtures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(tiny: Any) -> Any:
    from sgid.models.loading import load_sd_pipeline

    return load_sd_pipeline(tiny.generator, "img2img", CPU, torch.float32, False, private=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cat: 2 images + 1 unreadable file; golden_retriever: 2 images (40x32: the random crop has room to move)."""
    root = make_image_folder(
        tmp_path_factory.mktemp("lora-input") / "input", {"cat": 2, "golden_retriever": 2}, size=(40, 32)
    )
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, dataset: Path, cache_dir: Path) -> Path:
    """One finished 4-step run (checkpoints at 2) with 2 prior images per class, shared read-only."""
    return learned_folder(tmp_path_factory, "lora-run", dataset, FAST, cache_dir)


def private_parts(pipe: Any) -> DiffusionParts:
    """Training parts over private copies of everything training changes."""
    return DiffusionParts.from_pipeline(fork_pipeline(pipe, ("tokenizer", "text_encoder", "unet")))


def joint_data(parts: DiffusionParts, subjects: list[str], classes: list[str]) -> JointImages:
    images = [noise_image(i, (40, 32)) for i in range(len(classes))]
    return JointImages(ConceptImages(images, 32, parts.tokenizer, subjects, seed=0, key="test"), classes)


def trainer_for(pipe: Any, settings: LoraSettings, steps: int = 1) -> LoraTrainer:
    parts = private_parts(pipe)
    data = joint_data(parts, ["<sgid-cat> cat", "<sgid-dog> dog"], ["cat", "dog"])
    return LoraTrainer(
        parts,
        data,
        tokens=["<sgid-cat>", "<sgid-dog>"],
        init_tokens=["the", "dog"],
        settings=settings,
        total_steps=steps,
    )


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the training step ----------------------------------------------------------------------------------------
def test_one_step_changes_only_lora_weights_and_the_class_tokens_rows(pipe: Any) -> None:
    settings = LoraSettings(text_encoder=True, gradient_checkpointing=False)
    trainer = trainer_for(pipe, settings)
    parts = trainer.parts
    unet_before, encoder_before, vae_before = snapshot(parts.unet), snapshot(parts.text_encoder), snapshot(parts.vae)
    vocabulary = len(parts.tokenizer) - 2
    table = next(
        n for n, v in parts.text_encoder.named_parameters() if v is parts.text_encoder.get_input_embeddings().weight
    )
    (the,) = parts.tokenizer.encode("the", add_special_tokens=False)
    assert torch.equal(encoder_before[table][vocabulary], encoder_before[table][the])  # started from its init token

    loss = trainer.step()

    assert loss > 0 and trainer.step_done == 1 and len(trainer.losses) == 1
    trained = {name for name, _ in trainer.named}
    assert trained and all(".lora_" in name for name in trained)
    assert {name.split(".", 1)[0] for name in trained} == {"unet", "text_encoder"}
    for prefix, module, before in (
        ("unet", parts.unet, unet_before),
        ("text_encoder", parts.text_encoder, encoder_before),
    ):
        after = snapshot(module)
        assert after.keys() == before.keys()
        changed = {name for name in after if not torch.equal(after[name], before[name])}
        if prefix == "text_encoder":
            assert table in changed
            changed.discard(table)
            rows_after, rows_before = after[table], before[table]
            assert torch.equal(rows_after[:vocabulary], rows_before[:vocabulary])  # every existing row, bit for bit
            assert not torch.equal(rows_after[vocabulary:], rows_before[vocabulary:])  # both class tokens learned
        assert changed and all(".lora_" in name for name in changed)  # only adapter weights moved
        assert changed <= {n.split(".", 1)[1] for n in trained if n.startswith(f"{prefix}.")}
    assert all(torch.equal(value, vae_before[name]) for name, value in snapshot(parts.vae).items())
    base = [p for n, p in parts.unet.named_parameters() if ".lora_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in base)


def test_text_encoder_adapters_learn_with_checkpointing_and_no_tokens(pipe: Any) -> None:
    """Without token rows nothing before the text encoder's layers needs a gradient: its adapters must still get
    theirs through the (non-reentrant) activation checkpointing."""
    parts = private_parts(pipe)
    data = joint_data(parts, ["cat", "dog"], ["cat", "dog"])
    settings = LoraSettings(tokens=False, text_encoder=True, gradient_checkpointing=True)
    trainer = LoraTrainer(parts, data, tokens=[], init_tokens=[], settings=settings, total_steps=1)
    encoder = {n: p.detach().clone() for n, p in trainer.named if n.startswith("text_encoder.") and "lora_B" in n}
    trainer.step()
    after = dict(trainer.named)
    assert encoder and all(not torch.equal(after[n], before) for n, before in encoder.items())
    assert trainer.embeddings() == {} and len(parts.tokenizer) == len(pipe.tokenizer)


def test_loss_decreases_on_a_tiny_fixed_set(pipe: Any) -> None:
    """Thirty steps on two images lower the denoising loss on those images under fixed noise and timesteps."""
    settings = LoraSettings(learning_rate=3e-2, token_learning_rate=3e-2, gradient_checkpointing=False)
    parts = private_parts(pipe)
    data = joint_data(parts, ["<sgid-cat> cat", "<sgid-cat> cat"], ["cat", "cat"])
    trainer = LoraTrainer(parts, data, tokens=["<sgid-cat>"], init_tokens=["the"], settings=settings, total_steps=30)

    def fixed_loss() -> float:
        batch = data.instances.batch(0, 2)
        with torch.no_grad():
            prediction, target = noise_prediction(
                parts, batch.pixel_values.repeat(8, 1, 1, 1), batch.input_ids.repeat(8, 1), generator(1234)
            )
        return float(F.mse_loss(prediction, target))

    before = fixed_loss()
    for _ in range(30):
        trainer.step()
    after = fixed_loss()
    print(f"fixed-noise loss before {before:.4f}, after 30 steps {after:.4f}")
    assert after < before * 0.98, (before, after)


def test_batches_pair_each_image_with_a_prior_image_of_its_class(pipe: Any) -> None:
    tokenizer = pipe.tokenizer
    instances = ConceptImages(
        [noise_image(i, (40, 32)) for i in range(3)], 32, tokenizer, ["<a> cat", "<a> cat", "<b> dog"], seed=0, key="i"
    )
    priors = ConceptImages(
        [noise_image(10 + i) for i in range(4)],
        32,
        tokenizer,
        ["cat", "cat", "dog", "dog"],
        seed=0,
        key="p",
        templates=("a photo of a {}",),
    )
    data = JointImages(instances, ["cat", "cat", "dog"], priors, ["cat", "cat", "dog", "dog"])
    for step in range(4):
        batch = data.batch(step, 2)
        assert batch.pixel_values.shape == (4, 3, 32, 32) and len(batch.indices) == 2
        for instance, prior in zip(batch.prompts[:2], batch.prompts[2:], strict=True):
            assert prior == ("a photo of a cat" if "cat" in instance else "a photo of a dog")
        again = data.batch(step, 2)
        assert torch.equal(batch.pixel_values, again.pixel_values) and batch.prompts == again.prompts


# -- the concepts folder --------------------------------------------------------------------------------------
def test_run_writes_lora_tokens_priors_samples_and_loss(learned: Path) -> None:
    index = json.loads((learned / "concepts.json").read_text())
    assert index["method"] == "lora" and index["identity"]["method"] == "lora"
    assert index["identity"]["classes"] == ["cat", "golden_retriever"] and index["identity"]["alpha"] == 8.0
    assert {"torch", "diffusers", "peft", "transformers"} <= set(index["versions"])
    assert index["lora"]["rank"] == 4 and index["lora"]["unet_target_modules"] == ["to_k", "to_q", "to_v", "to_out.0"]
    cat = index["classes"]["cat"]
    assert cat["status"] == "done" and cat["prompt_label"] == "<sgid-cat> cat" and cat["images"] == 2
    assert [s["file"] for s in cat["skipped_images"]] == ["cat/broken.png"] and cat["prior_images"] == 2
    assert load_concepts(learned) == {"cat": "<sgid-cat>", "golden_retriever": "<sgid-golden_retriever>"}
    assert concept_labels(learned)["golden_retriever"] == "<sgid-golden_retriever> golden retriever"
    assert not (learned / "checkpoints").exists()

    files = set(folder_bytes(learned))
    assert {f"prior/{c}/000{i}.png" for c in ("cat", "golden_retriever") for i in (0, 1)} <= files
    assert {f"samples/step-00000{s}/{c}-0.png" for c in ("cat", "golden_retriever") for s in (2, 4)} <= files
    log = (learned / "loss.csv").read_text().splitlines()
    assert log[0] == "step,loss,instance_loss,prior_loss" and [line.split(",")[0] for line in log[1:]] == list("1234")
    assert all(float(line.split(",")[3]) > 0 for line in log[1:])  # prior preservation was on
    assert (learned / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    weights = concepts_lora(learned)
    assert weights == learned / "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert keys and all(k.startswith("unet.") and ".lora" in k for k in keys)
    assert json.loads(metadata["lora_adapter_metadata"])["unet.lora_alpha"] == 8.0


def trained_and_saved(pipe: Any, settings: LoraSettings, folder: Path) -> tuple[LoraTrainer, Any]:
    """A trainer after one step, its LoRA file in ``folder``, and a fresh pipeline holding its tokens."""
    trainer = trainer_for(pipe, settings)
    trainer.step()
    trainer.finish()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(trainer.lora_file_bytes())
    fresh = fork_pipeline(pipe, ("tokenizer", "text_encoder", "unet"))
    embeddings = trainer.embeddings()
    fresh.load_textual_inversion([{t: e[0]} for t, e in embeddings.items()], token=list(embeddings))
    return trainer, fresh


def test_saved_weights_load_in_diffusers_as_trained(pipe: Any, tmp_path: Path) -> None:
    """diffusers' own load_lora_weights + load_textual_inversion give exactly the trained model's outputs."""
    trainer, fresh = trained_and_saved(pipe, LoraSettings(alpha=2.0, gradient_checkpointing=False), tmp_path)
    fresh.load_lora_weights(str(tmp_path))

    ids = fresh.tokenizer(["a photo of a <sgid-cat> cat"], padding="max_length", max_length=77, return_tensors="pt")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = trainer.parts.unet(latents, 10, trainer.parts.text_encoder(ids.input_ids)[0]).sample
        loaded = fresh.unet(latents, 10, fresh.text_encoder(ids.input_ids)[0]).sample
        plain = pipe.unet(latents, 10, fresh.text_encoder(ids.input_ids)[0]).sample
    assert torch.equal(trained, loaded)
    assert not torch.allclose(loaded, plain, atol=1e-5)


def test_text_encoder_lora_round_trips(pipe: Any, tmp_path: Path) -> None:
    """Text-encoder adapters come back as trained (through peft directly where transformers refuses the
    installed peft, through diffusers otherwise)."""
    trainer, fresh = trained_and_saved(pipe, LoraSettings(text_encoder=True, gradient_checkpointing=False), tmp_path)
    apply_lora(fresh, tmp_path)
    assert fresh.get_list_adapters().keys() == {"unet", "text_encoder"}
    ids = fresh.tokenizer(["a photo of a <sgid-dog> dog"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(trainer.parts.text_encoder(ids.input_ids)[0], fresh.text_encoder(ids.input_ids)[0])


def test_resume_after_kill_equals_uninterrupted_run(
    learned: Path, dataset: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "concepts"
    count_steps(monkeypatch, LoraTrainer, fail_at=3)  # killed during the third step; the checkpoint holds step 2
    with pytest.raises(KeyboardInterrupt, match="test: interrupted at step 3"):
        learn_concepts(dataset, out, FAST, models="tiny", cache_dir=cache_dir, quiet=True)
    assert (out / "checkpoints" / "joint.safetensors").is_file() and not (
        out / "pytorch_lora_weights.safetensors"
    ).exists()
    priors_before = {name: data for name, data in folder_bytes(out).items() if name.startswith("prior/")}

    monkeypatch.undo()
    calls = count_steps(monkeypatch, LoraTrainer)
    learn_concepts(dataset, out, FAST, models="tiny", cache_dir=cache_dir, quiet=True)

    assert calls == [2, 3]  # only the steps after the checkpoint were redone
    resumed, uninterrupted = folder_bytes(out), folder_bytes(learned)
    assert {n: d for n, d in resumed.items() if n.startswith("prior/")} == priors_before  # stored and reused
    for name in uninterrupted.keys() - {"concepts.json"}:
        assert resumed[name] == uninterrupted[name], name  # weights, tokens, loss log and curve, samples, priors
    assert resumed.keys() == uninterrupted.keys()

    calls.clear()
    summary = learn_concepts(dataset, out, FAST, models="tiny", cache_dir=cache_dir, quiet=True)
    assert calls == [] and (summary.trained, summary.already_done) == (0, 2)


def test_other_settings_are_refused_unless_overwrite(
    learned: Path, dataset: Path, cache_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "concepts"
    shutil.copytree(learned, out)
    other = LoraSettings(steps=1, rank=2, samples_per_class=0, checkpoint_every=5)
    with pytest.raises(RunDirError, match="different settings.*rank"):
        learn_concepts(dataset, out, other, models="tiny", cache_dir=cache_dir, quiet=True)
    with pytest.raises(RunDirError, match="different settings.*method"):
        learn_concepts(dataset, out, models="tiny", cache_dir=cache_dir, quiet=True)  # textual inversion

    learn_concepts(dataset, out, other, classes=["cat"], models="tiny", cache_dir=cache_dir, quiet=True, overwrite=True)
    index = json.loads((out / "concepts.json").read_text())
    assert index["identity"]["rank"] == 2 and list(index["classes"]) == ["cat"]
    assert not (out / "prior").exists() and not (out / "samples").exists()  # the earlier run's files are gone
    assert not (out / "golden_retriever.safetensors").exists()
    assert [line.split(",")[0] for line in (out / "loss.csv").read_text().splitlines()] == ["step", "1"]


def test_without_tokens_the_folder_holds_lora_only(dataset: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "concepts"
    settings = LoraSettings(steps=1, tokens=False, samples_per_class=0)
    summary = learn_concepts(dataset, out, settings, models="tiny", cache_dir=cache_dir, quiet=True)
    assert summary.trained == 2 and summary.tokens == {}
    assert load_concepts(out) == {} and concept_labels(out) == {"cat": "cat", "golden_retriever": "golden retriever"}
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["pytorch_lora_weights.safetensors"]


# -- command line ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--method", "dreambooth"],
            "unknown learn-concepts method 'dreambooth'; choose from: textual_inversion, lora",
        ),
        (["--method", "lora", "--rank", "0"], "--rank must be at least 1, got 0"),
        (["--method", "lora", "--alpha", "-1"], "--alpha must be a positive number"),
        (["--method", "lora", "--prior-images", "-2"], "--prior-images must be 0 or more"),
        (["--rank", "8"], "--rank only applies to --method lora"),
        (["--method", "lora"], "no usable image in class zebra (zebra/empty.jpg: empty file (0 bytes))"),
        (["--classes", "zebra"], "no usable image in class zebra"),
    ],
)
def test_cli_bad_options_are_one_line_and_exit_2_before_any_model_loads(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_image_folder(tmp_path / "in", {"cat": 1})
    (source / "zebra").mkdir()
    (source / "zebra" / "empty.jpg").write_bytes(b"")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sgid.concepts.learn.load_sd_pipeline", no_model)
    code = main(["learn-concepts", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("sgid: error:") and message in err
    assert not (tmp_path / "out").exists()


def test_cli_method_names_are_the_registry() -> None:
    from sgid.commands.learn_concepts import METHODS

    assert list(METHODS) == CONCEPT_METHODS.names()


def test_cli_learns_a_lora_with_progress_and_loss(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "concepts"
    args = ["learn-concepts", str(dataset), "--out", str(out), "--models", "tiny", "--method", "lora"]
    assert main([*args, "--steps", "1", "--samples-per-class", "0", "--rank", "2", "--train-text-encoder"]) == 0
    err = capsys.readouterr().err
    assert "lora loss" in err and "learned 2, skipped 0 already done, failed 0" in err
    index = json.loads((out / "concepts.json").read_text())
    assert index["lora"]["text_encoder"] is True and index["identity"]["rank"] == 2
    keys = load_file(out / "pytorch_lora_weights.safetensors").keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)


def test_module_examples() -> None:
    import doctest

    import sgid.concepts.monitor
    import sgid.concepts.store

    for module in (sgid.concepts.store, sgid.concepts.monitor):
        assert doctest.testmod(module).failed == 0


def test_concepts_lora_and_an_external_lora_are_both_active(learned: Path, pipe: Any, tmp_path: Path) -> None:
    from sgid.concepts import prepare_pipeline

    trained_and_saved(pipe, LoraSettings(gradient_checkpointing=False), tmp_path)  # another LoRA, made elsewhere
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))

    def unet_output(prepared_pipe: Any) -> torch.Tensor:
        with torch.no_grad():
            return prepared_pipe.unet(latents, 10, hidden).sample  # type: ignore[no-any-return]

    folder_only = prepare_pipeline(pipe, concepts=learned)
    both = prepare_pipeline(pipe, concepts=learned, lora=tmp_path, lora_scale=0.5)
    assert folder_only.concepts_adapter == both.concepts_adapter == "sgid_concepts" and both.adapter is not None
    assert sorted(both.pipe.get_active_adapters()) == sorted([both.concepts_adapter, both.adapter])
    assert not torch.allclose(unet_output(folder_only.pipe), unet_output(both.pipe), atol=1e-6)
    assert both.labels == concept_labels(learned) and both.concepts_sha256 == folder_only.concepts_sha256
