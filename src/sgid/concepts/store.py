"""The concepts directory: self-describing, resumable, never half-written.

Layout of DIR::

    concepts.json               index: model, settings, and per class folder its token, init token, steps done
    <class>.safetensors         one learned embedding per finished class: {token: (1, D) tensor}, the
                                diffusers learned-embeds format (pipe.load_textual_inversion(path, token=token))
    checkpoints/<name>.safetensors
                                training state of unfinished work (a class's row, or the joint LoRA run's
                                weights), AdamW's state, the step
    .sgid-lock                  held while a run writes (a second run is refused)

``--method lora`` adds ``pytorch_lora_weights.safetensors``, ``prior/`` (class images for prior preservation),
``samples/`` (images at checkpoints), ``loss.csv`` and ``loss.png`` (see :mod:`sgid.concepts.joint`).

Every file is written to a temporary name and renamed into place. A class is finished when its embedding file
is in place and the index says ``done``; its checkpoint is then removed. A run killed at any moment loses at
most the steps since the last checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from sgid.errors import RunDirError, SgidError
from sgid.manifest import relative_path
from sgid.models.loading import safetensors_problem
from sgid.owned import OwnedFolder, atomic_write

CONCEPTS_FILE = "concepts.json"
CHECKPOINT_DIR = "checkpoints"
LOCK = ".sgid-lock"
FORMAT = "sgid-concepts"
FORMAT_VERSION = 1
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes and loads
#: Other files and folders a learn-concepts run writes (``--overwrite`` removes them, and nothing else).
RESULTS = ("lora",)  # index entries a finished run adds beside "classes" (kept when a rerun opens DIR)
JOINT_CHECKPOINT = "joint"  # the checkpoint name of a run that trains every class at once
OWNED = (LORA_WEIGHT_NAME, "prior", "samples", "loss.csv", "loss.png")


class Checkpoint(Protocol):
    """A trainer's state: the step reached, the last loss, and tensors that restore it exactly."""

    @property
    def step(self) -> int: ...

    @property
    def loss(self) -> float | None: ...

    def to_tensors(self) -> dict[str, torch.Tensor]: ...


State = TypeVar("State", bound=Checkpoint)


def read_index(directory: str | Path) -> dict[str, Any]:
    """The parsed ``concepts.json`` of ``directory``, or a :class:`SgidError` saying why it is not one."""
    path = Path(directory).expanduser() / CONCEPTS_FILE
    if not path.is_file():
        raise SgidError(
            f"{Path(directory)} is not a concepts directory (no {CONCEPTS_FILE}); create one with sgid learn-concepts"
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SgidError(f"{path} is unreadable: {exc}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("classes"), dict):
        raise SgidError(f"{path} is not an sgid concepts index")
    if index.get("format_version") != FORMAT_VERSION:
        raise SgidError(
            f"{path} has format version {index.get('format_version')}; this sgid reads version {FORMAT_VERSION}"
        )
    _check_entries(path, index)
    return index


def _check_entries(path: Path, index: dict[str, Any]) -> None:
    """Every entry as learn-concepts writes it: a file named in the index is read, hashed and (``--overwrite``)
    removed, so it must lie inside the folder; a status sgid does not write would be read as not learned."""
    for name, entry in index["classes"].items():
        where = f"{path}, class {name!r}"
        if not isinstance(entry, dict):
            raise SgidError(f"{where}: not an entry sgid learn-concepts writes (an object)")
        for key in ("token", "prompt_label"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise SgidError(f"{where}: {key} {json.dumps(entry[key])[:40]} is not text")
        if entry.get("status") not in (None, "done", "failed"):
            raise SgidError(f'{where}: status {json.dumps(entry["status"])[:40]} is neither "done" nor "failed"')
        if entry.get("file") is not None:
            relative_path(entry["file"], "file", where)
    lora = index.get("lora")
    if lora is not None:
        if not isinstance(lora, dict):
            raise SgidError(f"{path}: lora is not an entry sgid learn-concepts writes (an object)")
        if lora.get("file") is not None:
            relative_path(lora["file"], "file", f"{path}, lora")


def whole_safetensors(path: Path) -> bool:
    return path.is_file() and safetensors_problem(path) is None


def finished_classes(directory: str | Path) -> int:
    """Classes the index on disk marks done whose embedding file is in place (what a rerun will skip)."""
    try:
        classes = read_index(directory)["classes"]
    except SgidError:
        return 0
    return sum(
        isinstance(entry, dict)
        and entry.get("status") == "done"
        and isinstance(entry.get("file"), str)
        and whole_safetensors(Path(directory) / entry["file"])
        for entry in classes.values()
    )


def embedding_file_bytes(token: str, embedding: torch.Tensor) -> bytes:
    """diffusers' learned-embeds file: one tensor named by the token (the example's ``{"format": "pt"}``)."""
    return safetensors_bytes({token: embedding.detach().cpu().contiguous()}, metadata={"format": "pt"})


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its metadata keys sorted, so equal content gives equal bytes.

    safetensors writes the metadata map in a random order (a Rust HashMap), so a file with more than one
    metadata key differs from run to run; the tensors' part does not.

    >>> one = safetensors_bytes({"x": torch.zeros(2)}, metadata={"b": "1", "a": "2", "format": "pt"})
    >>> canonical_safetensors(one)[8:48]
    b'{"__metadata__":{"a":"2","b":"1","format'
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors aligns the data that follows to 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


class ConceptsDir(OwnedFolder):
    """Owns DIR while a ``learn-concepts`` run writes to it."""

    marker = CONCEPTS_FILE
    lock_name = LOCK
    holds = "concepts learned"
    foreign = "{path} is not empty and holds no " + CONCEPTS_FILE + "; choose an empty or new folder for --out"

    def __init__(self, path: str | Path, identity: dict[str, Any], *, overwrite: bool = False) -> None:
        super().__init__(path, identity, overwrite=overwrite)
        self.index: dict[str, Any] = {}

    # -- opening -----------------------------------------------------------------------------------------
    def open(self, info: dict[str, Any]) -> ConceptsDir:
        """Lock DIR, clear an earlier run if ``overwrite``, and write the index (``info`` + identity)."""
        if self.claim() is not None and self.overwrite:
            self.clear()
        previous = self.read_marker() if self.holds_job() else {"classes": {}}
        self.index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **info,
            **self.stamp(),
            "classes": previous["classes"],
            **{key: previous[key] for key in RESULTS if key in previous},
        }
        self._write_index()
        self.remove_temporaries()
        return self

    @contextmanager
    def session(self, info: dict[str, Any]) -> Iterator[ConceptsDir]:
        self.open(info)
        try:
            yield self
        finally:
            self.close()

    def read_marker(self) -> dict[str, Any]:
        try:
            return read_index(self.path)
        except SgidError as exc:
            raise RunDirError(f"{exc}; move it away or choose another --out") from None

    def clear(self) -> None:
        """Remove only what an earlier learn-concepts run wrote."""
        inside = self.path.resolve()
        for entry in self.read_marker()["classes"].values():  # read_marker: every file inside (_check_entries)
            if isinstance(entry, dict) and entry.get("file"):
                target = self.path / entry["file"]
                if inside in target.resolve().parents:  # and a link out of the folder is not followed either
                    target.unlink(missing_ok=True)
        self.remove((CHECKPOINT_DIR, *OWNED))
        (self.path / CONCEPTS_FILE).unlink()

    def _write_index(self) -> None:
        text = json.dumps(self.index, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        atomic_write(self.path / CONCEPTS_FILE, text.encode("utf-8"))

    # -- progress ----------------------------------------------------------------------------------------
    def is_done(self, class_name: str) -> bool:
        """Finished, with its embedding file in place (a LoRA run without tokens has no file per class)."""
        entry = self.index["classes"].get(class_name)
        if not (entry and entry.get("status") == "done"):
            return False
        return entry.get("file") is None or whole_safetensors(self.path / entry["file"])

    def _checkpoint_path(self, class_name: str) -> Path:
        return self.path / CHECKPOINT_DIR / f"{class_name}.safetensors"

    def save_checkpoint(self, name: str, state: Checkpoint, key: dict[str, str]) -> None:
        """Write ``state`` atomically; ``key`` (token, images, identity) must match for a resume to use it."""
        metadata = dict(key, step=str(state.step), loss="" if state.loss is None else repr(state.loss))
        data = safetensors_bytes(state.to_tensors(), metadata=metadata)
        self.write(f"{CHECKPOINT_DIR}/{name}.safetensors", canonical_safetensors(data))

    def load_checkpoint(
        self, name: str, key: dict[str, str], rebuild: Callable[[int, dict[str, torch.Tensor], float | None], State]
    ) -> State | None:
        """The saved state of ``name`` if there is one made under the same ``key``, else None.

        ``rebuild(step, tensors, loss)`` makes the state (e.g. ``TrainState.from_tensors``; a KeyError when a
        tensor is missing). A foreign, damaged or incomplete file is not a usable checkpoint.
        """
        path = self._checkpoint_path(name)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {tensor: handle.get_tensor(tensor) for tensor in handle.keys()}
            step = int(metadata["step"])
            loss = float(metadata["loss"]) if metadata.get("loss") else None
            if any(metadata.get(field) != value for field, value in key.items()):
                return None
            return rebuild(step, tensors, loss)
        except (OSError, SafetensorError, KeyError, ValueError):
            return None

    def drop_checkpoint(self, name: str) -> None:
        self._checkpoint_path(name).unlink(missing_ok=True)
        if (self.path / CHECKPOINT_DIR).is_dir() and not any((self.path / CHECKPOINT_DIR).iterdir()):
            (self.path / CHECKPOINT_DIR).rmdir()

    def finish(self, class_name: str, entry: dict[str, Any], embedding: torch.Tensor) -> None:
        """Write the class's embedding file, then mark it done in the index, then drop its checkpoint."""
        atomic_write(self.path / entry["file"], embedding_file_bytes(entry["token"], embedding))
        self.index["classes"][class_name] = dict(entry, status="done")
        self._write_index()
        self.drop_checkpoint(class_name)

    def finish_joint(
        self, entries: dict[str, dict[str, Any]], embeddings: dict[str, torch.Tensor], extra: dict[str, Any]
    ) -> None:
        """Finish a joint (LoRA) run: every class's embedding file (classes with a ``file``), then the index
        (every class done, ``extra`` merged in), then drop the run's checkpoint. The caller writes the weights
        file first, so an index that says done never points at a missing file."""
        for entry in entries.values():
            if entry.get("file"):
                atomic_write(
                    self.path / entry["file"], embedding_file_bytes(entry["token"], embeddings[entry["token"]])
                )
        for class_name, entry in entries.items():
            self.index["classes"][class_name] = dict(entry, status="done")
        self.index.update(extra)
        self._write_index()
        self.drop_checkpoint(JOINT_CHECKPOINT)

    def fail(self, class_name: str, entry: dict[str, Any]) -> None:
        """Record a class that could not be trained (e.g. no readable image); a rerun tries it again."""
        self.index["classes"][class_name] = dict(entry, status="failed")
        self._write_index()
