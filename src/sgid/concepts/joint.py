"""``sgid learn-concepts --method lora``: one LoRA and one token per class, learned from every class at once.

The run, in order (each step resumable):

1. every chosen class must have a usable image (checked before any model loads: LoRA trains them together);
2. with ``--prior-images N``: N class images per class from the frozen base model, rendered where missing
   (:mod:`sgid.concepts.prior`);
3. training (:class:`~sgid.concepts.lora.LoraTrainer`), with a checkpoint, the loss log and curve, and sample
   images every ``--checkpoint-every`` steps (:mod:`sgid.concepts.monitor`);
4. the result: ``pytorch_lora_weights.safetensors`` (diffusers' LoRA format), one ``<class>.safetensors``
   embedding per class (textual-inversion format), and ``concepts.json`` saying ``"method": "lora"``, each class
   ``done`` with its ``prompt_label`` (``"<sgid-cat> cat"``: what ``sgid augment`` writes where the label was).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sgid.concepts.data import ConceptImages, JointImages
from sgid.concepts.lora import LoraSettings, LoraState, LoraTrainer
from sgid.concepts.method import CONCEPT_METHODS, ClassImages, ConceptMethod, Counts, Job, run_steps
from sgid.concepts.monitor import write_losses, write_samples
from sgid.concepts.prior import CLASS_PROMPT, prior_images
from sgid.concepts.store import JOINT_CHECKPOINT, LORA_WEIGHT_NAME, ConceptsDir, whole_safetensors
from sgid.concepts.tokens import choose_init_token
from sgid.dataset import Listing
from sgid.images import LoadedImage
from sgid.progress import note


@CONCEPT_METHODS.register("lora")
class LoraMethod(ConceptMethod):
    name = "lora"
    settings_type = LoraSettings
    settings: LoraSettings

    def check_inputs(self, listing: Listing, chosen: list[str], explicit: Sequence[str] | None) -> None:
        self.found = self.require_images(
            listing,
            chosen,
            "--method lora trains every class together: add images, or leave the class out with --classes",
        )

    def identity(self, chosen: list[str]) -> dict[str, Any]:
        return self.settings.identity(chosen)

    def learn(self, job: Job) -> Counts:
        s, store, parts = self.settings, job.store, job.parts
        if finished(store, job.chosen):
            return Counts(0, len(job.chosen), 0)
        for found in self.found.values():
            found.report(job.quiet)
        labels = {name: job.listing.labels[name] for name in job.chosen}
        # 1. class images from the frozen base model, as loaded (before any token, adapter or cast)
        priors = prior_images(store, parts, labels, s, job.resolution, job.quiet) if s.prior_images else {}
        # 2. the trainer: tokens, adapters, the joint data
        parts.text_encoder.float()  # it trains (token rows, maybe LoRA): fp32, as the diffusers examples keep it
        tokens = {name: job.tokens[name] for name in job.chosen} if s.tokens else {}
        init_tokens = {name: choose_init_token(parts.tokenizer, labels[name], s.init_token) for name in tokens}
        subjects = {name: f"{tokens[name]} {labels[name]}" if tokens else labels[name] for name in job.chosen}
        data = joint_images(job, self.found, priors, subjects, labels, s.seed)
        total = s.total_steps(len(job.chosen))
        trainer = LoraTrainer(
            parts,
            data,
            tokens=list(tokens.values()),
            init_tokens=[init_tokens[name] for name in tokens],
            settings=s,
            total_steps=total,
        )
        key = {
            "images_sha256": fingerprint(self.found, priors),
            "tokens": json.dumps(tokens, sort_keys=True),
            "identity_sha256": store.index["identity_sha256"],
        }
        state = store.load_checkpoint(JOINT_CHECKPOINT, key, LoraState.from_tensors)
        if state is not None:
            trainer.load_state(state)
            note(f"lora: resuming from the checkpoint at step {state.step}", job.quiet)

        def monitor() -> None:
            write_losses(store, trainer.losses, f"LoRA rank {s.rank}, {len(job.chosen)} classes")
            if s.samples_per_class:
                write_samples(store, parts, subjects, trainer.step_done, s, job.resolution)

        def checkpoint() -> None:
            monitor()
            store.save_checkpoint(JOINT_CHECKPOINT, trainer.state(), key)

        run_steps(trainer, total, s.checkpoint_every, checkpoint, quiet=job.quiet)
        trainer.finish()
        # 3. the result: weights first, then the index says done (and names them), then the checkpoint goes
        monitor()
        store.write(LORA_WEIGHT_NAME, trainer.lora_file_bytes())
        entries = {
            name: {
                "token": tokens.get(name),
                "label": labels[name],
                "prompt_label": subjects[name],
                "init_token": init_tokens.get(name),
                "file": f"{name}.safetensors" if tokens else None,
                "images": len(self.found[name].images),
                "skipped_images": self.found[name].skipped,
                "prior_images": len(priors.get(name, [])),
                "steps_done": trainer.step_done,
                "last_loss": trainer.last_loss,
            }
            for name in job.chosen
        }
        store.finish_joint(entries, trainer.embeddings(), {"lora": trainer.description_of_lora()})
        return Counts(len(job.chosen), 0, 0)


def finished(store: ConceptsDir, chosen: Sequence[str]) -> bool:
    lora = store.index.get("lora")
    return (
        isinstance(lora, dict)
        and whole_safetensors(store.path / str(lora.get("file")))
        and all(store.is_done(name) for name in chosen)
    )


def joint_images(
    job: Job,
    found: dict[str, ClassImages],
    priors: dict[str, list[LoadedImage]],
    subjects: dict[str, str],
    labels: dict[str, str],
    seed: int,
) -> JointImages:
    """All classes' images (prompts naming each image's class) and, if any, their prior-preservation images."""
    classes = [name for name in job.chosen for _ in found[name].images]
    instances = ConceptImages(
        [loaded.image for name in job.chosen for loaded in found[name].images],
        job.resolution,
        job.parts.tokenizer,
        [subjects[name] for name in classes],
        seed=seed,
        key="lora-instances",
    )
    if not priors:
        return JointImages(instances, classes)
    prior_classes = [name for name in job.chosen for _ in priors[name]]
    prior_set = ConceptImages(
        [loaded.image for name in job.chosen for loaded in priors[name]],
        job.resolution,
        job.parts.tokenizer,
        [labels[name] for name in prior_classes],
        seed=seed,
        key="lora-prior",
        templates=(CLASS_PROMPT,),
    )
    return JointImages(instances, classes, prior_set, prior_classes)


def fingerprint(found: dict[str, ClassImages], priors: dict[str, list[LoadedImage]]) -> str:
    """SHA-256 over every class's images and class images: a checkpoint resumes only on the same data."""
    digest = hashlib.sha256()
    for name in sorted(found):
        digest.update(f"{name}\x1f{found[name].fingerprint()}\n".encode())
        for loaded in priors.get(name, []):
            digest.update(f"prior\x1f{loaded.sha256}\n".encode())
    return digest.hexdigest()
