"""Using learned concepts and LoRA weights in a Stable Diffusion pipeline.

A concepts folder (``sgid learn-concepts``) holds tokens (textual inversion), LoRA weights, or both (``--method
lora``); :func:`prepare_pipeline` applies whatever it holds, plus ``--lora`` weights made elsewhere.

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
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sgid.concepts.store import CONCEPTS_FILE, LORA_WEIGHT_NAME, read_index, whole_safetensors
from sgid.errors import SgidError, require
from sgid.models.loading import safetensors_problem


# -- concepts ----------------------------------------------------------------------------------------------
def load_concepts(directory: str | Path) -> dict[str, str]:
    """Class folder -> token for every finished class of a concepts directory (``sgid learn-concepts --out``)
    that has a token ({} for a LoRA learned with ``--no-tokens``)."""
    directory = Path(directory).expanduser()
    return _finished(directory, read_index(directory))


def _finished(directory: Path, index: dict[str, Any]) -> dict[str, str]:
    learned = {
        name: entry
        for name, entry in sorted(index["classes"].items())
        if entry.get("status") == "done" and entry.get("file")
    }
    lost = [name for name, entry in learned.items() if not whole_safetensors(directory / entry["file"])]
    if lost:  # prompts would fall back to the plain label for these classes, unsaid
        raise SgidError(
            f"{directory}: the learned concept file(s) of {len(lost)} class(es) are missing or damaged "
            f"({', '.join(lost[:5])}); rerun sgid learn-concepts with the same options to learn them again"
        )
    tokens = {name: entry["token"] for name, entry in learned.items()}
    if not tokens and _lora_file(directory, index) is None:
        raise SgidError(f"{directory} holds no finished concepts yet; run sgid learn-concepts to completion first")
    return tokens


def _lora_file(directory: Path, index: dict[str, Any]) -> Path | None:
    """The folder's LoRA weights (``--method lora``), once the run that wrote them finished."""
    lora = index.get("lora")
    if not isinstance(lora, dict) or not lora.get("file"):
        return None
    path = directory / str(lora["file"])
    if not path.is_file():
        raise SgidError(f"{directory}: concepts.json names the LoRA weights {path.name}, which are missing")
    problem = safetensors_problem(path)
    if problem is not None:
        raise SgidError(
            f"cannot read the LoRA weights {path}: {problem}; rerun sgid learn-concepts with the same options to "
            f"learn them again"
        )
    return path


def concept_labels(directory: str | Path) -> dict[str, str]:
    """Class folder -> what Stable Diffusion prompts say instead of the label: the token (textual inversion),
    or the prompt the LoRA was trained with (``"<sgid-cat> cat"``; the label itself with ``--no-tokens``)."""
    directory = Path(directory).expanduser()
    index = read_index(directory)
    tokens = _finished(directory, index)
    labels = {}
    for name, entry in sorted(index["classes"].items()):
        if entry.get("status") == "done" and (name in tokens or entry.get("file") is None):
            labels[name] = str(entry.get("prompt_label") or entry["token"])
    return labels


def concepts_lora(directory: str | Path) -> Path | None:
    """The LoRA weights file of a concepts folder, None when it holds tokens only."""
    directory = Path(directory).expanduser()
    return _lora_file(directory, read_index(directory))


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
        raise SgidError(
            f"cannot read the learned embedding {path}: {exc}; rerun sgid learn-concepts with the same options to "
            f"learn it again"
        ) from None
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
    """SHA-256 over the index's finished classes, their embedding files, what prompts say for them, and the
    LoRA weights (for run identities and each manifest row's provenance)."""
    directory = Path(directory).expanduser()
    index = read_index(directory)
    digest = hashlib.sha256()
    tokens = _finished(directory, index)
    for name, token in tokens.items():
        digest.update(f"{name}\x1f{token}\x1f".encode())
        digest.update((directory / index["classes"][name]["file"]).read_bytes())
    lora = _lora_file(directory, index)
    if lora is not None:
        for name, text in concept_labels(directory).items():
            digest.update(f"{name}\x1f{text}\x1f".encode())
        digest.update(b"lora\x1f" + lora.read_bytes())
    return digest.hexdigest()


# -- LoRA --------------------------------------------------------------------------------------------------
def resolve_lora_file(path: str | Path) -> Path:
    """The ``.safetensors`` file of a LoRA given as a file or as a folder (``pytorch_lora_weights.safetensors``,
    or the folder's only ``.safetensors`` file), checked whole (its header read). Pickle formats are refused:
    loading them can run code."""
    return _check_lora_file(_locate_lora_file(path))


def _locate_lora_file(path: str | Path) -> Path:
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


def apply_lora(
    pipe: Any, path: str | Path, scale: float = 1.0, adapter_name: str | None = None, *, activate: bool = True
) -> str:
    """Load LoRA weights (diffusers/kohya/PEFT formats, via ``pipe.load_lora_weights``) at ``scale``.

    Returns the adapter name; ``activate=False`` leaves choosing the active adapters (``pipe.set_adapters``) to
    the caller, for several at once. Raises :class:`SgidError` when peft is missing, the file is not LoRA
    weights, or the weights do not fit this model; the pipeline may then hold a partly loaded adapter and
    should be dropped.
    """
    require("peft", "concepts")
    file = resolve_lora_file(path)
    name = adapter_name or "sgid_" + (re.sub(r"[^A-Za-z0-9_]+", "_", file.stem).strip("_") or "lora")
    if any(name in names for names in pipe.get_list_adapters().values()):
        raise SgidError(f"the pipeline already has a LoRA adapter named {name!r}")
    try:
        with _diffusers_logging_off():  # it logs the whole shape-mismatch list; the error below says it in a line
            if _text_encoder_needs_peft_directly(pipe, file):
                _load_split(pipe, file, name)
            else:
                pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=name)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:240]
        raise SgidError(f"the LoRA weights {file} do not fit this Stable Diffusion model: {reason}") from None
    if not any(name in names for names in pipe.get_list_adapters().values()):
        raise SgidError(f"the LoRA weights {file} matched no layer of this Stable Diffusion model")
    if activate:
        pipe.set_adapters([name], adapter_weights=[float(scale)])
    return name


def _text_encoder_needs_peft_directly(pipe: Any, file: Path) -> bool:
    """True when the file has text-encoder weights and transformers refuses the installed peft for its own
    adapter loading (transformers 5 wants a newer peft than some environments have); sgid then injects the
    text encoder's adapter with peft itself, the same layers and weights."""
    from importlib.metadata import version

    from packaging.version import Version

    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:  # pragma: no cover - older transformers: no such requirement
        return False
    if Version(version("peft")) >= Version(MIN_PEFT_VERSION):
        return False
    with safe_open(str(file), framework="pt") as handle:
        names = list(handle.keys())
    return any(n.startswith(("text_encoder.", "lora_te")) for n in names)


def _load_split(pipe: Any, file: Path, name: str) -> None:
    """The UNet's part through diffusers (``load_lora_into_unet``), the text encoder's through peft."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    state, alphas, metadata = pipe.lora_state_dict(str(file), return_lora_metadata=True)
    unet_state = {k: v for k, v in state.items() if k.startswith("unet.")}
    if unet_state:
        pipe.load_lora_into_unet(
            unet_state, network_alphas=alphas, unet=pipe.unet, adapter_name=name, metadata=metadata, _pipeline=pipe
        )
    prefix = "text_encoder."
    encoder = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    encoder = convert_state_dict_to_peft(convert_state_dict_to_diffusers(encoder))
    if not hasattr(pipe.text_encoder, "text_model"):  # transformers 5 flattened CLIPTextModel
        encoder = {k.removeprefix("text_model."): v for k, v in encoder.items()}
    config = {k.removeprefix(prefix): v for k, v in (metadata or {}).items() if k.startswith(prefix)}
    if not config:
        raise ValueError(
            "text-encoder LoRA weights without their adapter configuration need a peft release that transformers "
            "accepts (pip install -U peft)"
        )
    inject_adapter_in_model(LoraConfig(**config), pipe.text_encoder, adapter_name=name)
    result = set_peft_model_state_dict(pipe.text_encoder, encoder, adapter_name=name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ValueError(f"text-encoder weights match no layer: {', '.join(unexpected[:3])}")


@contextmanager
def _diffusers_logging_off() -> Iterator[None]:
    """diffusers' logging off, and peft's warning that a second adapter joins the first (sgid means it)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def lora_fingerprint(path: str | Path) -> str:
    """SHA-256 of the LoRA file that ``apply_lora(pipe, path)`` loads."""
    return hashlib.sha256(resolve_lora_file(path).read_bytes()).hexdigest()


def _check_lora_file(file: Path) -> Path:
    problem = safetensors_problem(file)
    if problem is not None:
        raise SgidError(f"--lora {file}: cannot read these LoRA weights ({problem}); is the file whole?")
    return file


# -- private pipelines ------------------------------------------------------------------------------------
def fork_pipeline(pipe: Any, mutable: Iterable[str] = ("tokenizer", "text_encoder")) -> Any:
    """A pipeline of the same class that shares ``pipe``'s modules except ``mutable``, which are deep copies.

    Concepts mutate the tokenizer and text encoder; LoRA also the UNet (``mutable`` then needs ``"unet"``). A
    pipeline with a second text encoder (SDXL) has it copied along with the first.
    """
    from sgid.models.loading import assemble_pipeline

    components = dict(pipe.components)
    second = {"tokenizer": "tokenizer_2", "text_encoder": "text_encoder_2"}
    for name in mutable:
        if name not in components:
            raise ValueError(f"{type(pipe).__name__} has no component {name!r}")
        for part in (name, second.get(name)):
            if part is not None and components.get(part) is not None:
                components[part] = copy.deepcopy(components[part])
    return assemble_pipeline(type(pipe), components, pipe.config)


@dataclass(frozen=True)
class Prepared:
    pipe: Any  # a fork of the given pipeline (or the pipeline itself when nothing was applied)
    tokens: dict[str, str]  # class folder -> concept token ({} without concepts)
    adapter: str | None  # the --lora adapter's name, None without --lora
    labels: dict[str, str] = field(default_factory=dict)  # class folder -> what prompts say instead of the label
    concepts_sha256: str | None = None  # the concepts folder's fingerprint, None without concepts
    concepts_adapter: str | None = None  # the concepts folder's LoRA adapter name, None when it has no LoRA


def prepare_pipeline(
    pipe: Any, *, concepts: str | Path | None = None, lora: str | Path | None = None, lora_scale: float = 1.0
) -> Prepared:
    """Fork ``pipe`` (a cached pipeline is never touched) and apply a concepts folder (its tokens, its LoRA or
    both) and/or LoRA weights made elsewhere (``lora``, at ``lora_scale``; the folder's LoRA runs at 1)."""
    if concepts is None and lora is None:
        return Prepared(pipe, {}, None)
    concepts_weights = concepts_lora(concepts) if concepts is not None else None
    changes_unet = lora is not None or concepts_weights is not None
    forked = fork_pipeline(pipe, ("tokenizer", "text_encoder") + (("unet",) if changes_unet else ()))
    tokens = apply_concepts(forked, concepts) if concepts is not None else {}
    names, weights = [], []
    if concepts_weights is not None:
        names.append(apply_lora(forked, concepts_weights, adapter_name="sgid_concepts", activate=False))
        weights.append(1.0)
    if lora is not None:
        names.append(apply_lora(forked, lora, lora_scale, activate=False))
        weights.append(float(lora_scale))
    if names:
        forked.set_adapters(names, adapter_weights=weights)
    return Prepared(
        forked,
        tokens,
        names[-1] if lora is not None else None,
        concept_labels(concepts) if concepts is not None else {},
        concepts_fingerprint(concepts) if concepts is not None else None,
        names[0] if concepts_weights is not None else None,
    )


__all__ = [
    "CONCEPTS_FILE",
    "Prepared",
    "apply_concepts",
    "apply_lora",
    "concept_labels",
    "concepts_fingerprint",
    "concepts_lora",
    "fork_pipeline",
    "load_concepts",
    "lora_fingerprint",
    "prepare_pipeline",
    "resolve_lora_file",
]
