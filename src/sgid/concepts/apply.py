"""Using learned concepts and LoRA weights in a Stable Diffusion pipeline.

Both mutate the pipeline: textual inversion adds tokens to its tokenizer and rows to its text encoder, LoRA
injects adapter layers into its UNet (and text encoder, when the file has text-encoder weights). Pipelines from
``sgid.models.loading.load_sd_pipeline`` are cached and shared by the whole process, so never apply either to
one directly: take :func:`fork_pipeline` (or ``load_sd_pipeline(..., private=True)``) first, or let
:func:`prepare_pipeline` do both.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sgid.concepts.store import CONCEPTS_FILE, read_index
from sgid.errors import SgidError, require

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes


# -- concepts ----------------------------------------------------------------------------------------------
def load_concepts(directory: str | Path) -> dict[str, str]:
    """Class folder -> token for every finished class of a concepts directory (``sgid learn-concepts --out``)."""
    directory = Path(directory).expanduser()
    return _finished(directory, read_index(directory))


def _finished(directory: Path, index: dict[str, Any]) -> dict[str, str]:
    tokens = {
        name: entry["token"]
        for name, entry in sorted(index["classes"].items())
        if entry.get("status") == "done" and (directory / entry["file"]).is_file()
    }
    if not tokens:
        raise SgidError(f"{directory} holds no finished concepts yet; run sgid learn-concepts to completion first")
    return tokens


def apply_concepts(pipe: Any, directory: str | Path) -> dict[str, str]:
    """Load every finished class's embedding into ``pipe``'s tokenizer and text encoder; return class -> token.

    Idempotent: a token already loaded with the same embedding is left as it is.
    """
    directory = Path(directory).expanduser()
    index = read_index(directory)
    tokens = _finished(directory, index)
    width = int(pipe.text_encoder.get_input_embeddings().weight.shape[-1])
    to_load: dict[str, torch.Tensor] = {}
    for name, token in tokens.items():
        embedding = _read_embedding(directory / index["classes"][name]["file"], token, width, index.get("model"))
        if not _already_loaded(pipe, token, embedding):
            to_load[token] = embedding
    if to_load:
        pipe.load_textual_inversion(
            [{token: embedding} for token, embedding in to_load.items()],
            token=list(to_load),
            tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder,
        )
    return tokens


def _read_embedding(path: Path, token: str, width: int, model: Any) -> torch.Tensor:
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            if names != [token]:
                raise SgidError(f"{path} should hold exactly one embedding named {token}, found {names}")
            embedding = handle.get_tensor(token)
    except (OSError, SafetensorError) as exc:
        raise SgidError(f"cannot read the learned embedding {path}: {exc}") from None
    if embedding.dim() == 2 and embedding.shape[0] == 1:
        embedding = embedding[0]
    if embedding.dim() != 1:
        raise SgidError(f"{path}: expected one embedding vector, found shape {tuple(embedding.shape)}")
    if embedding.shape[0] != width:
        raise SgidError(
            f"{path.parent} was learned for a text encoder of width {embedding.shape[0]} (model {model}); this "
            f"pipeline's text encoder has width {width}: learn the concepts with the same --sd-model"
        )
    return embedding


def _already_loaded(pipe: Any, token: str, embedding: torch.Tensor) -> bool:
    """True when ``token`` is loaded with this embedding, False when absent; an error when it differs."""
    if token not in pipe.tokenizer.get_vocab():
        return False
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(token)]
    if torch.equal(row.detach().cpu().float(), embedding.float().to(row.dtype).float()):
        return True
    raise SgidError(
        f"the pipeline already has a token {token} with another embedding; apply concepts to a fresh pipeline"
    )


def concepts_fingerprint(directory: str | Path) -> str:
    """SHA-256 over the index's finished classes and their embedding files (for run identities/provenance)."""
    directory = Path(directory).expanduser()
    index = read_index(directory)
    digest = hashlib.sha256()
    for name, token in _finished(directory, index).items():
        digest.update(f"{name}\x1f{token}\x1f".encode())
        digest.update((directory / index["classes"][name]["file"]).read_bytes())
    return digest.hexdigest()


# -- LoRA --------------------------------------------------------------------------------------------------
def resolve_lora_file(path: str | Path) -> Path:
    """The ``.safetensors`` file of a LoRA given as a file or as a folder (``pytorch_lora_weights.safetensors``,
    or the folder's only ``.safetensors`` file). Pickle formats are refused: loading them can run code."""
    given = Path(path).expanduser()
    if given.is_file():
        if given.suffix != ".safetensors":
            raise SgidError(f"--lora {given}: only .safetensors LoRA files are loaded (pickle files can run code)")
        return given
    if given.is_dir():
        if (given / LORA_WEIGHT_NAME).is_file():
            return given / LORA_WEIGHT_NAME
        found = sorted(given.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        if not found:
            raise SgidError(f"--lora {given}: the folder holds no .safetensors file")
        names = ", ".join(p.name for p in found)
        raise SgidError(f"--lora {given}: the folder holds several .safetensors files ({names}); pass one of them")
    raise SgidError(f"--lora {given}: no such file or folder")


def apply_lora(pipe: Any, path: str | Path, scale: float = 1.0, adapter_name: str | None = None) -> str:
    """Load LoRA weights (diffusers/kohya/PEFT formats, via ``pipe.load_lora_weights``) at ``scale``.

    Returns the adapter name. Raises :class:`SgidError` when peft is missing, the file is not LoRA weights, or
    the weights do not fit this model; the pipeline may then hold a partly loaded adapter and should be dropped.
    """
    require("peft", "concepts")
    file = resolve_lora_file(path)
    name = adapter_name or "sgid_" + (re.sub(r"[^A-Za-z0-9_]+", "_", file.stem).strip("_") or "lora")
    if any(name in names for names in pipe.get_list_adapters().values()):
        raise SgidError(f"the pipeline already has a LoRA adapter named {name!r}")
    try:
        with _diffusers_logging_off():  # it logs the whole shape-mismatch list; the error below says it in a line
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=name)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:240]
        raise SgidError(f"the LoRA weights {file} do not fit this Stable Diffusion model: {reason}") from None
    if not any(name in names for names in pipe.get_list_adapters().values()):
        raise SgidError(f"the LoRA weights {file} matched no layer of this Stable Diffusion model")
    pipe.set_adapters([name], adapter_weights=[float(scale)])
    return name


@contextmanager
def _diffusers_logging_off() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def lora_fingerprint(path: str | Path) -> str:
    """SHA-256 of the LoRA file that ``apply_lora(pipe, path)`` loads."""
    return hashlib.sha256(resolve_lora_file(path).read_bytes()).hexdigest()


# -- private pipelines ------------------------------------------------------------------------------------
def fork_pipeline(pipe: Any, mutable: Iterable[str] = ("tokenizer", "text_encoder")) -> Any:
    """A pipeline of the same class that shares ``pipe``'s modules except ``mutable``, which are deep copies.

    Concepts mutate the tokenizer and text encoder; LoRA also the UNet (``mutable`` then needs ``"unet"``).
    """
    components = dict(pipe.components)
    for name in mutable:
        if name not in components:
            raise ValueError(f"{type(pipe).__name__} has no component {name!r}")
        components[name] = copy.deepcopy(components[name])
    extra = {}
    if "requires_safety_checker" in pipe.config:
        extra["requires_safety_checker"] = pipe.config.requires_safety_checker
    forked = type(pipe)(**components, **extra)
    forked.set_progress_bar_config(disable=True)
    return forked


@dataclass(frozen=True)
class Prepared:
    pipe: Any  # a fork of the given pipeline (or the pipeline itself when nothing was applied)
    tokens: dict[str, str]  # class folder -> concept token ({} without concepts)
    adapter: str | None  # LoRA adapter name, None without LoRA


def prepare_pipeline(
    pipe: Any, *, concepts: str | Path | None = None, lora: str | Path | None = None, lora_scale: float = 1.0
) -> Prepared:
    """Fork ``pipe`` (a cached pipeline is never touched) and apply learned concepts and/or LoRA weights."""
    if concepts is None and lora is None:
        return Prepared(pipe, {}, None)
    mutable = ("tokenizer", "text_encoder") + (("unet",) if lora is not None else ())
    forked = fork_pipeline(pipe, mutable)
    tokens = apply_concepts(forked, concepts) if concepts is not None else {}
    adapter = apply_lora(forked, lora, lora_scale) if lora is not None else None
    return Prepared(forked, tokens, adapter)


__all__ = [
    "CONCEPTS_FILE",
    "Prepared",
    "apply_concepts",
    "apply_lora",
    "concepts_fingerprint",
    "fork_pipeline",
    "load_concepts",
    "lora_fingerprint",
    "prepare_pipeline",
    "resolve_lora_file",
]
