"""The concepts directory: self-describing, resumable, never half-written.

Layout of DIR::

    concepts.json               index: model, settings, and per class folder its token, init token, steps done
    <class>.safetensors         one learned embedding per finished class: {token: (1, D) tensor}, the
                                diffusers learned-embeds format (pipe.load_textual_inversion(path, token=token))
    checkpoints/<class>.safetensors
                                training state of an unfinished class: the row, AdamW's state, the step
    .sgid-lock                  held while a run writes (a second run is refused)

Every file is written to a temporary name and renamed into place. A class is finished when its embedding file
is in place and the index says ``done``; its checkpoint is then removed. A run killed at any moment loses at
most the steps since the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from sgid.concepts.trainer import TrainState
from sgid.errors import RunDirError, SgidError
from sgid.runstore import FolderLock, atomic_write, identity_hash

CONCEPTS_FILE = "concepts.json"
CHECKPOINT_DIR = "checkpoints"
LOCK = ".sgid-lock"
FORMAT = "sgid-concepts"
FORMAT_VERSION = 1


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
    return index


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
        and (Path(directory) / entry["file"]).is_file()
        for entry in classes.values()
    )


def embedding_file_bytes(token: str, embedding: torch.Tensor) -> bytes:
    """diffusers' learned-embeds file: one tensor named by the token (the example's ``{"format": "pt"}``)."""
    return safetensors_bytes({token: embedding.detach().cpu().contiguous()}, metadata={"format": "pt"})


class ConceptsDir:
    """Owns DIR while a ``learn-concepts`` run writes to it."""

    def __init__(self, path: str | Path, identity: dict[str, Any], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.identity = identity
        self.overwrite = overwrite
        self.index: dict[str, Any] = {}
        self._lock = FolderLock(self.path)

    # -- opening -----------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse (read-only) a DIR holding other settings or foreign files, unless ``overwrite``."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise RunDirError(f"--out {self.path} exists and is not a folder")
        if (self.path / CONCEPTS_FILE).exists():
            previous = self._read_own_index()
            if previous.get("identity_sha256") != identity_hash(self.identity) and not self.overwrite:
                changed = _changed_keys(previous.get("identity", {}), self.identity)
                raise RunDirError(
                    f"{self.path} holds concepts learned with different settings ({', '.join(changed)}); rerun "
                    f"with the same settings to resume, choose another --out, or pass --overwrite"
                )
        elif any(p.name != LOCK for p in self.path.iterdir()):
            raise RunDirError(
                f"{self.path} is not empty and holds no {CONCEPTS_FILE}; choose an empty or new folder for --out"
            )

    def open(self, info: dict[str, Any]) -> ConceptsDir:
        """Lock DIR, clear an earlier run if ``overwrite``, and write the index (``info`` + identity)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(f"another sgid run is writing to {self.path}; wait for it or choose another --out")
        self.check()
        if (self.path / CONCEPTS_FILE).exists() and self.overwrite:
            self._clear()
        classes = self._read_own_index()["classes"] if (self.path / CONCEPTS_FILE).exists() else {}
        self.index = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **info,
            "identity": self.identity,
            "identity_sha256": identity_hash(self.identity),
            "classes": classes,
        }
        self._write_index()
        for stale in self.path.rglob(".*.tmp-*"):
            stale.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        self._lock.release()

    @contextmanager
    def session(self, info: dict[str, Any]) -> Iterator[ConceptsDir]:
        self.open(info)
        try:
            yield self
        finally:
            self.close()

    def _read_own_index(self) -> dict[str, Any]:
        try:
            return read_index(self.path)
        except SgidError as exc:
            raise RunDirError(f"{exc}; move it away or choose another --out") from None

    def _clear(self) -> None:
        """Remove only what an earlier learn-concepts run wrote."""
        for entry in self._read_own_index()["classes"].values():
            if isinstance(entry, dict) and entry.get("file"):
                (self.path / entry["file"]).unlink(missing_ok=True)
        shutil.rmtree(self.path / CHECKPOINT_DIR, ignore_errors=True)
        (self.path / CONCEPTS_FILE).unlink()

    def _write_index(self) -> None:
        text = json.dumps(self.index, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        atomic_write(self.path / CONCEPTS_FILE, text.encode("utf-8"))

    # -- progress ----------------------------------------------------------------------------------------
    def is_done(self, class_name: str) -> bool:
        entry = self.index["classes"].get(class_name)
        return bool(entry and entry.get("status") == "done" and (self.path / entry["file"]).is_file())

    def _checkpoint_path(self, class_name: str) -> Path:
        return self.path / CHECKPOINT_DIR / f"{class_name}.safetensors"

    def save_checkpoint(self, class_name: str, state: TrainState, key: dict[str, str]) -> None:
        """Write ``state`` atomically; ``key`` (token, init token, images) must match for a resume to use it."""
        tensors = {"embedding": state.embedding.contiguous()}
        tensors.update({f"optimizer.{name}": value.contiguous() for name, value in state.optimizer.items()})
        metadata = dict(key, step=str(state.step), loss="" if state.loss is None else repr(state.loss))
        path = self._checkpoint_path(class_name)
        path.parent.mkdir(exist_ok=True)
        atomic_write(path, safetensors_bytes(tensors, metadata=metadata))

    def load_checkpoint(self, class_name: str, key: dict[str, str]) -> TrainState | None:
        """The saved state of ``class_name`` if there is one made under the same ``key``, else None."""
        path = self._checkpoint_path(class_name)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            step = int(metadata["step"])
            loss = float(metadata["loss"]) if metadata.get("loss") else None
        except (OSError, SafetensorError, KeyError, ValueError):
            return None  # a foreign or damaged file is not a usable checkpoint
        if any(metadata.get(name) != value for name, value in key.items()) or "embedding" not in tensors:
            return None
        optimizer = {name.split(".", 1)[1]: value for name, value in tensors.items() if name.startswith("optimizer.")}
        return TrainState(step, tensors["embedding"], optimizer, loss)

    def finish(self, class_name: str, entry: dict[str, Any], embedding: torch.Tensor) -> None:
        """Write the class's embedding file, then mark it done in the index, then drop its checkpoint."""
        atomic_write(self.path / entry["file"], embedding_file_bytes(entry["token"], embedding))
        self.index["classes"][class_name] = dict(entry, status="done")
        self._write_index()
        self._checkpoint_path(class_name).unlink(missing_ok=True)
        if (self.path / CHECKPOINT_DIR).is_dir() and not any((self.path / CHECKPOINT_DIR).iterdir()):
            (self.path / CHECKPOINT_DIR).rmdir()

    def fail(self, class_name: str, entry: dict[str, Any]) -> None:
        """Record a class that could not be trained (e.g. no readable image); a rerun tries it again."""
        self.index["classes"][class_name] = dict(entry, status="failed")
        self._write_index()


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return changed or ["identity"]
