"""``sgid learn-concepts``: learned concepts per class folder, by textual inversion (the default) or LoRA.

``--method textual_inversion`` (DA-Fusion's use of textual inversion): one token per class, classes one after the
other, each from a fresh copy of the tokenizer and text encoder, so a class's embedding does not depend on which
classes ran before it. ``--method lora`` (:mod:`sgid.concepts.joint`): one LoRA for the whole dataset plus one
token per class, trained jointly. ``sgid augment --concepts DIR`` then uses what the folder holds.

>>> learn_concepts("data/train", "data/concepts", TrainSettings(steps=1000), models="default")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sgid import __version__
from sgid.concepts.data import ConceptImages
from sgid.concepts.method import CONCEPT_METHODS, ConceptMethod, Counts, Job, read_class_images, run_steps
from sgid.concepts.store import ConceptsDir, finished_classes
from sgid.concepts.tokens import choose_init_token, concept_tokens
from sgid.concepts.trainer import ConceptTrainer, DiffusionParts, TrainSettings, TrainState
from sgid.dataset import Listing, empty_classes_note, read_label_names, scan
from sgid.errors import SgidError, disk_full_is_one_line
from sgid.models.loading import (
    TINY_WARNING,
    default_cache_dir,
    is_tiny,
    load_sd_pipeline,
    resolve_device,
    resolve_dtype,
    resolve_models,
)
from sgid.outdir import check_out_dir
from sgid.progress import counted, note, warn
from sgid.versions import CORE, package_versions


@dataclass(frozen=True)
class LearnSummary:
    out_dir: Path
    trained: int  # classes finished by this invocation
    already_done: int  # classes found finished by an earlier invocation
    failed: int  # classes without a usable image
    seconds: float
    tokens: dict[str, str]  # every finished class in OUT that has a token -> its token

    def line(self) -> str:
        return (
            f"learned {self.trained}, skipped {self.already_done} already done, failed {self.failed}; "
            f"{len(self.tokens)} concepts in {self.out_dir} [{self.seconds:.1f}s]"
        )


def learn_concepts(
    input_dir: str | Path,
    out_dir: str | Path,
    settings: Any = None,
    *,
    method: str | None = None,
    models: str = "default",
    sd_model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
    label_names: str | Path | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> LearnSummary:
    """Python API of ``sgid learn-concepts`` (the same options as the command line).

    ``settings`` is a :class:`TrainSettings` (textual inversion) or a :class:`~sgid.concepts.lora.LoraSettings`
    (LoRA); ``method`` defaults to the one that takes it (textual inversion without settings).
    """
    started = time.monotonic()
    # 1. Check inputs (no model is loaded before this passes)
    if method is None:
        method = next((n for n in CONCEPT_METHODS if isinstance(settings, CONCEPT_METHODS.get(n).settings_type)), None)
    kind = CONCEPT_METHODS.get(method or "textual_inversion")
    learner = kind(settings if settings is not None else kind.settings_type())
    listing = scan(Path(input_dir), read_label_names(Path(label_names)) if label_names else None)
    if listing.empty:
        warn(empty_classes_note(Path(input_dir), listing.empty))
    chosen = select_classes(listing, classes)
    learner.check_inputs(listing, chosen, classes)
    tokens = concept_tokens(listing.classes)  # over all folders, so a token never depends on --classes
    check_out_dir(out_dir, [("the input folder", input_dir)], command="learn-concepts")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    choice = resolve_models(models, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), generator=sd_model)
    store = ConceptsDir(out_dir, {"model": choice.generator.name, **learner.identity(chosen)}, overwrite=overwrite)
    store.check()
    # 2. Load a private copy of the model: training adds tokens (and adapters) to it
    pipe = load_sd_pipeline(choice.generator, "img2img", torch_device, torch_dtype, False, private=True)
    parts = DiffusionParts.from_pipeline(pipe)
    resolution = learner.settings.resolution or parts.native_resolution
    if is_tiny(choice):
        note(TINY_WARNING, quiet)
    info = {
        "sgid_version": __version__,
        "method": kind.name,
        "model": choice.generator.name,
        "text_encoder_width": parts.embedding_width,
        "resolution": resolution,
        "settings": asdict(learner.settings),
        "input": str(Path(input_dir).resolve()),
        "device": str(torch_device),
        "dtype": str(torch_dtype).removeprefix("torch."),  # of the UNet and VAE; what is learned trains in fp32
        "versions": package_versions((*CORE, "peft")),
    }
    # 3. Learn, skipping what is finished and resuming from checkpoints
    kept = lambda: counted(finished_classes(store.path), "finished class", "finished classes") + " kept"  # noqa: E731
    with disk_full_is_one_line(store.path, kept), store.session(info):
        counts = learner.learn(Job(store, parts, listing, chosen, tokens, resolution, quiet))
        done = {
            name: entry["token"]
            for name, entry in store.index["classes"].items()
            if store.is_done(name) and entry.get("token") and entry.get("file")
        }
    seconds = time.monotonic() - started
    summary = LearnSummary(store.path, counts.trained, counts.already_done, counts.failed, seconds, done)
    note(summary.line(), quiet)
    return summary


def select_classes(listing: Listing, classes: Sequence[str] | None) -> list[str]:
    """The class folders to learn, sorted; every name in ``classes`` must be a class folder of the input."""
    if not classes:
        return list(listing.classes)
    unknown = sorted(set(classes) - set(listing.classes))
    if unknown:
        shown = ", ".join(listing.classes[:20]) + (", ..." if len(listing.classes) > 20 else "")
        raise SgidError(f"--classes names folders that are not in the input: {', '.join(unknown)} (found: {shown})")
    return sorted(set(classes))


# -- textual inversion -------------------------------------------------------------------------------------
@CONCEPT_METHODS.register("textual_inversion")
class TextualInversion(ConceptMethod):
    """One token per class, each learned alone (:class:`ConceptTrainer`); a class without images is recorded as
    failed and the others go on, unless it was named in ``--classes``."""

    name = "textual_inversion"
    settings_type = TrainSettings
    settings: TrainSettings

    def check_inputs(self, listing: Listing, chosen: list[str], explicit: Sequence[str] | None) -> None:
        if explicit:
            self.require_images(listing, chosen, "add images or leave the class out of --classes")

    def identity(self, chosen: list[str]) -> dict[str, Any]:
        return self.settings.identity()

    def learn(self, job: Job) -> Counts:
        trained = already_done = failed = 0
        for class_name in job.chosen:
            if job.store.is_done(class_name):
                already_done += 1
                continue
            learned = learn_class(
                job.store,
                job.parts,
                class_name,
                job.listing,
                job.tokens[class_name],
                self.settings,
                job.resolution,
                quiet=job.quiet,
            )
            trained += learned
            failed += not learned
        return Counts(trained, already_done, failed)


def learn_class(
    store: ConceptsDir,
    parts: DiffusionParts,
    class_name: str,
    listing: Listing,
    token: str,
    settings: TrainSettings,
    resolution: int,
    *,
    quiet: bool = False,
) -> bool:
    """Train (or resume) one class's token and write it to the store; False when the class has no usable image."""
    found = read_class_images(listing, class_name)
    found.report(quiet)
    entry: dict[str, Any] = {
        "token": token,
        "label": listing.labels[class_name],
        "file": f"{class_name}.safetensors",
        "images": len(found.images),
        "skipped_images": found.skipped,
    }
    if not found.images:
        note(f"{class_name}: no usable image; nothing learned for this class", quiet)
        store.fail(class_name, dict(entry, reason="no usable image"))
        return False
    # Fresh copies per class (fp32 text encoder, as the example's mixed precision keeps it)
    own = replace(parts, tokenizer=copy.deepcopy(parts.tokenizer), text_encoder=copy.deepcopy(parts.text_encoder))
    own.text_encoder.float()
    init_token = choose_init_token(own.tokenizer, entry["label"], settings.init_token)
    data = ConceptImages(
        [loaded.image for loaded in found.images], resolution, own.tokenizer, token, seed=settings.seed, key=class_name
    )
    trainer = ConceptTrainer(own, data, token=token, init_token=init_token, settings=settings, key=class_name)
    key = {
        "token": token,
        "init_token": init_token,
        "images_sha256": found.fingerprint(),
        "identity_sha256": store.index["identity_sha256"],
    }
    state = store.load_checkpoint(class_name, key, TrainState.from_tensors)
    if state is not None:
        trainer.load_state(state)
        note(f"{class_name}: resuming from the checkpoint at step {state.step}", quiet)
    run_steps(
        trainer,
        settings.steps,
        settings.checkpoint_every,
        lambda: store.save_checkpoint(class_name, trainer.state(), key),
        quiet=quiet,
    )
    trainer.finish()
    entry.update(init_token=init_token, steps_done=trainer.step_done, last_loss=trainer.last_loss)
    store.finish(class_name, entry, trainer.embedding())
    return True


# --method lora registers itself after textual inversion, the default, which CONCEPT_METHODS lists first
from sgid.concepts import joint as _joint  # noqa: E402, F401

__all__ = ["LearnSummary", "learn_class", "learn_concepts", "select_classes"]
