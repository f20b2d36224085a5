"""What every ``sgid learn-concepts --method`` shares: the registry, the checked job, the class images, the
step loop with progress and checkpoints.

A method is a :class:`ConceptMethod` registered in :data:`CONCEPT_METHODS` under its ``--method`` name. Its
three steps are called in order by :func:`sgid.concepts.learn.learn_concepts`:

1. ``check_inputs`` (before any model is loaded: bad input is one line and exit code 2),
2. ``identity`` (the settings that change the result; a concepts folder holding another identity is refused),
3. ``learn`` (with the model loaded and the folder locked), returning how many classes it trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from sgid.concepts.store import ConceptsDir
from sgid.concepts.trainer import DiffusionParts
from sgid.dataset import Listing
from sgid.errors import SgidError
from sgid.images import ImageError, LoadedImage, load_rgb
from sgid.progress import bar, note
from sgid.registry import Registry


@dataclass(frozen=True)
class ClassImages:
    images: list[LoadedImage]
    relpaths: list[str]
    skipped: list[dict[str, str]]  # {"file", "reason"} for files of the class that could not be used

    def report(self, quiet: bool) -> None:
        for skip in self.skipped:
            note(f"skipping {skip['file']}: {skip['reason']}", quiet)

    def fingerprint(self) -> str:
        """SHA-256 over the used files' paths and contents: a checkpoint resumes only on the same images."""
        digest = hashlib.sha256()
        for relpath, loaded in zip(self.relpaths, self.images, strict=True):
            digest.update(f"{relpath}\x1f{loaded.sha256}\n".encode())
        return digest.hexdigest()


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


def require_images(found: dict[str, ClassImages], why: str) -> dict[str, ClassImages]:
    """``found``, or one line naming every class in it without a usable image (and what was wrong with its
    files)."""
    empty = [name for name, images in found.items() if not images.images]
    if not empty:
        return found
    details = []
    for name in empty:
        skipped = found[name].skipped
        shown = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        details.append(f"{name} ({shown or 'no files'})")
    raise SgidError(f"no usable image in class {', '.join(details)}: {why}")


@dataclass
class Job:
    """A learn-concepts run after its inputs were checked and its model loaded, with the folder locked."""

    store: ConceptsDir
    parts: DiffusionParts
    listing: Listing
    chosen: list[str]  # the class folders to learn, sorted
    tokens: dict[str, str]  # every class folder of the input -> its token
    resolution: int
    quiet: bool = False


@dataclass(frozen=True)
class Counts:
    trained: int  # classes finished by this invocation
    already_done: int  # classes found finished by an earlier invocation
    failed: int  # classes without a usable image


class ConceptMethod:
    """A way to learn concepts: ``settings_type`` holds its hyperparameters (a dataclass with ``validate``)."""

    name: ClassVar[str]
    settings_type: ClassVar[type]
    settings: Any

    def __init__(self, settings: Any) -> None:
        if not isinstance(settings, self.settings_type):
            raise TypeError(f"--method {self.name} takes {self.settings_type.__name__}, not {type(settings).__name__}")
        self.settings = settings
        self.settings.validate()

    def check_inputs(self, listing: Listing, chosen: list[str], explicit: Sequence[str] | None) -> None:
        """Refuse, before any model is loaded, input this method cannot learn from (``explicit``: --classes)."""

    def require_images(self, listing: Listing, chosen: list[str], why: str) -> dict[str, ClassImages]:
        """Every chosen class's images, read now; a class without a usable image is an error (``why``)."""
        return require_images({name: read_class_images(listing, name) for name in chosen}, why)

    def identity(self, chosen: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def learn(self, job: Job) -> Counts:
        raise NotImplementedError


CONCEPT_METHODS: Registry[type[ConceptMethod]] = Registry("learn-concepts method")


class Steppable(Protocol):
    step_done: int

    @property
    def description(self) -> str: ...

    def step(self) -> float: ...


def run_steps(
    trainer: Steppable, total: int, every: int, checkpoint: Callable[[], None], *, quiet: bool = False
) -> None:
    """Step until ``total``, with a progress bar showing the loss and ``checkpoint()`` every ``every`` steps
    (not after the last one: the caller finishes the run then)."""
    progress = bar(total, trainer.description, "step", quiet)
    progress.update(trainer.step_done)
    try:
        while trainer.step_done < total:
            loss = trainer.step()
            progress.set_description_str(f"{trainer.description} loss {loss:.4f}", refresh=False)
            progress.update(1)
            if trainer.step_done % every == 0 and trainer.step_done < total:
                checkpoint()
    finally:
        progress.close()
