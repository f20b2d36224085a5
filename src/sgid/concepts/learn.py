"""``sgid learn-concepts``: one textual-inversion token per class folder (DA-Fusion's use of textual inversion).

Run it once per dataset and model; ``sgid augment --concepts DIR`` then writes each class's token where the
label text was ("A picture of a <sgid-cat>, ..."). Classes run one after the other, each from a fresh copy of the
tokenizer and text encoder, so a class's embedding does not depend on which classes ran before it.

>>> learn_concepts("data/train", "data/concepts", TrainSettings(steps=1000), models="default")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sgid import __version__
from sgid.concepts.data import ConceptImages
from sgid.concepts.store import ConceptsDir
from sgid.concepts.tokens import choose_init_token, concept_tokens
from sgid.concepts.trainer import ConceptTrainer, DiffusionParts, TrainSettings
from sgid.dataset import Listing, read_label_names, scan
from sgid.errors import SgidError
from sgid.images import ImageError, LoadedImage, load_rgb
from sgid.models.loading import (
    TINY_WARNING,
    default_cache_dir,
    is_tiny,
    load_sd_pipeline,
    resolve_device,
    resolve_dtype,
    resolve_models,
)
from sgid.progress import bar, note


@dataclass(frozen=True)
class LearnSummary:
    out_dir: Path
    trained: int  # classes finished by this invocation
    already_done: int  # classes found finished by an earlier invocation
    failed: int  # classes without a usable image
    seconds: float
    tokens: dict[str, str]  # every finished class in OUT -> its token

    def line(self) -> str:
        return (
            f"learned {self.trained}, skipped {self.already_done} already done, failed {self.failed}; "
            f"{len(self.tokens)} concepts in {self.out_dir} [{self.seconds:.1f}s]"
        )


@dataclass(frozen=True)
class ClassImages:
    images: list[LoadedImage]
    relpaths: list[str]
    skipped: list[dict[str, str]]  # {"file", "reason"} for files of the class that could not be used

    def fingerprint(self) -> str:
        """SHA-256 over the used files' paths and contents: a checkpoint resumes only on the same images."""
        digest = hashlib.sha256()
        for relpath, loaded in zip(self.relpaths, self.images, strict=True):
            digest.update(f"{relpath}\x1f{loaded.sha256}\n".encode())
        return digest.hexdigest()


def learn_concepts(
    input_dir: str | Path,
    out_dir: str | Path,
    settings: TrainSettings | None = None,
    *,
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
    """Python API of ``sgid learn-concepts`` (the same options as the command line)."""
    started = time.monotonic()
    settings = settings or TrainSettings()
    # 1. Check inputs (no model is loaded before this passes)
    settings.validate()
    listing = scan(Path(input_dir), read_label_names(Path(label_names)) if label_names else None)
    chosen = select_classes(listing, classes)
    tokens = concept_tokens(listing.classes)  # over all folders, so a token never depends on --classes
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    choice = resolve_models(models, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), generator=sd_model)
    store = ConceptsDir(out_dir, {"model": choice.generator.name, **settings.identity()}, overwrite=overwrite)
    store.check()
    # 2. Load a private copy of the model: training adds tokens to its tokenizer and text encoder
    pipe = load_sd_pipeline(choice.generator, "img2img", torch_device, torch_dtype, False, private=True)
    parts = DiffusionParts.from_pipeline(pipe)
    resolution = settings.resolution or parts.native_resolution
    if is_tiny(choice):
        note(TINY_WARNING, quiet)
    info = {
        "sgid_version": __version__,
        "model": choice.generator.name,
        "text_encoder_width": parts.embedding_width,
        "resolution": resolution,
        "settings": asdict(settings),
        "input": str(Path(input_dir).resolve()),
        "device": str(torch_device),
        "dtype": str(torch_dtype).removeprefix("torch."),  # of the UNet and VAE; the embedding trains in fp32
    }
    # 3. Learn each class, skipping finished ones and resuming from checkpoints
    trained = already_done = failed = 0
    with store.session(info):
        for class_name in chosen:
            if store.is_done(class_name):
                already_done += 1
                continue
            learned = learn_class(
                store, parts, class_name, listing, tokens[class_name], settings, resolution, quiet=quiet
            )
            trained += learned
            failed += not learned
        done = {name: entry["token"] for name, entry in store.index["classes"].items() if store.is_done(name)}
    summary = LearnSummary(store.path, trained, already_done, failed, time.monotonic() - started, done)
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


def read_class_images(listing: Listing, class_name: str) -> ClassImages:
    """The class's readable images (in path order) and, with reasons, its files that cannot be used."""
    prefix = f"{class_name}/"
    skipped = [{"file": rel, "reason": why} for rel, why in listing.skipped if rel.startswith(prefix)]
    images: list[LoadedImage] = []
    relpaths: list[str] = []
    for source in (s for s in listing.sources if s.class_name == class_name):
        try:
            images.append(load_rgb(source.path))
            relpaths.append(source.relpath)
        except ImageError as exc:
            skipped.append({"file": source.relpath, "reason": str(exc)})
    return ClassImages(images, relpaths, skipped)


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
    for skip in found.skipped:
        note(f"skipping {skip['file']}: {skip['reason']}", quiet)
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
    state = store.load_checkpoint(class_name, key)
    if state is not None:
        trainer.load_state(state)
        note(f"{class_name}: resuming from the checkpoint at step {state.step}", quiet)
    run_steps(trainer, store, class_name, key, settings, quiet=quiet)
    trainer.finish()
    entry.update(init_token=init_token, steps_done=trainer.step_done, last_loss=trainer.last_loss)
    store.finish(class_name, entry, trainer.embedding())
    return True


def run_steps(
    trainer: ConceptTrainer,
    store: ConceptsDir,
    class_name: str,
    key: dict[str, str],
    settings: TrainSettings,
    *,
    quiet: bool = False,
) -> None:
    """Step until ``settings.steps``, with a progress bar showing the loss and a checkpoint every N steps."""
    progress = bar(settings.steps, f"{class_name} {trainer.token}", "step", quiet)
    progress.update(trainer.step_done)
    try:
        while trainer.step_done < settings.steps:
            loss = trainer.step()
            progress.set_description_str(f"{class_name} {trainer.token} loss {loss:.4f}", refresh=False)
            progress.update(1)
            if trainer.step_done % settings.checkpoint_every == 0 and trainer.step_done < settings.steps:
                store.save_checkpoint(class_name, trainer.state(), key)
    finally:
        progress.close()
