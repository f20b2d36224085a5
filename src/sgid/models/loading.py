"""Load the three models SGID needs, by hub id or local directory.

* safetensors only (``use_safetensors=True``), never remote code (``trust_remote_code=False``);
* cuda + fp16 when a GPU is there, else cpu + fp32 (both overridable);
* every loader is cached per process, so a model is loaded once however many stages use it;
* when weights cannot be had, :class:`~sgid.errors.ModelLoadError` says which model and how to point at a
  local copy, before any work starts.
"""

from __future__ import annotations

import functools
import os
import textwrap
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from sgid.errors import ModelLoadError, SgidError, reason
from sgid.registry import Registry


@dataclass(frozen=True)
class ModelRef:
    """A model to load: ``name`` is what the manifest records, ``path`` is what ``from_pretrained`` gets."""

    name: str
    path: str
    config: str | None = None  # single-file checkpoints: a diffusers folder or hub id holding its configs


@dataclass(frozen=True)
class ModelChoice:
    captioner: ModelRef
    scorer: ModelRef
    generator: ModelRef
    instruct: ModelRef
    text: ModelRef | None = None  # optional local language model (sentences, summaries, instructions)
    controlnet: ModelRef | None = None  # --control: the ControlNet that guides img2img
    control_model: ModelRef | None = None  # --control depth: the depth-estimation model


@dataclass(frozen=True)
class ModelPreset:
    captioner: str
    scorer: str
    generator: str
    instruct: str
    tiny: bool = False


#: ``--models`` presets. ``default`` is the paper's models; ``tiny`` builds random-weight stand-ins offline.
MODEL_PRESETS: Registry[ModelPreset] = Registry("models preset")
MODEL_PRESETS.add(
    "default",
    ModelPreset(
        captioner="Salesforce/blip-image-captioning-base",
        scorer="openai/clip-vit-base-patch32",
        generator="stable-diffusion-v1-5/stable-diffusion-v1-5",
        instruct="timbrooks/instruct-pix2pix",
    ),
)
MODEL_PRESETS.add("tiny", ModelPreset("tiny:blip", "tiny:clip", "tiny:sd", "tiny:pix2pix", tiny=True))

TINY_WARNING = (
    "--models tiny: random-weight stand-in models; captions are word salad and images are noise. "
    "Use it to test the pipeline, never to judge augmentation."
)


def default_cache_dir() -> Path:
    """``$SGID_CACHE``, else ``$XDG_CACHE_HOME/sgid``, else ``~/.cache/sgid``."""
    if os.environ.get("SGID_CACHE"):
        return Path(os.environ["SGID_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sgid"


def resolve_models(
    preset: str,
    *,
    cache_dir: Path,
    captioner: str | None = None,
    scorer: str | None = None,
    generator: str | None = None,
    instruct: str | None = None,
    text: str | None = None,
    sd_config: str | None = None,
    backend: str | None = None,
    control: str | None = None,
    controlnet: str | None = None,
    control_model: str | None = None,
) -> ModelChoice:
    """Turn a preset plus per-model overrides into loadable references (building tiny models if asked).

    Without ``generator``, ``backend`` (a family of :mod:`sgid.backends`) picks the preset's model of that family.
    With ``control`` (a kind of :mod:`sgid.stages.control`), ``controlnet`` defaults to the ControlNet of that
    kind for the generator's family (the tiny preset: its tiny ControlNet of the family).
    """
    chosen = MODEL_PRESETS.get(preset)
    if generator is None and backend is not None:
        from sgid.backends import BACKENDS

        family = BACKENDS.get(backend)
        generator = family.tiny_model if chosen.tiny else family.default_model
    names = {
        "captioner": captioner or chosen.captioner,
        "scorer": scorer or chosen.scorer,
        "generator": generator or chosen.generator,
        "instruct": instruct or chosen.instruct,
    }
    if text:
        names["text"] = text
    if control is not None:
        names["controlnet"] = controlnet or _default_controlnet(control, names["generator"], sd_config, backend)
        from sgid.stages.control import CONTROLS

        kind = CONTROLS.get(control)
        if kind.needs_model:
            names["control_model"] = control_model or (kind.tiny_model if chosen.tiny else kind.default_model)
    from sgid.models.tiny import COMPONENTS

    unknown = [n for n in names.values() if n.startswith("tiny:") and n.split(":", 1)[1] not in COMPONENTS]
    if unknown:  # before any tiny model is built
        raise SgidError(f"unknown tiny model {unknown[0]!r}; choose from: tiny:{', tiny:'.join(COMPONENTS)}")
    refs: dict[str, ModelRef] = {}
    tiny_paths: dict[str, Path] | None = None
    for role, name in names.items():
        if name.startswith("tiny:"):
            if tiny_paths is None:
                from sgid.models.tiny import ensure_tiny_models

                try:
                    tiny_paths = ensure_tiny_models(cache_dir)
                except OSError as exc:  # a file, a read-only or vanished place: the user's --cache-dir
                    raise SgidError(
                        f"--cache-dir {cache_dir}: the tiny models cannot be kept there ({reason(exc)})"
                    ) from None
            component = name.split(":", 1)[1]
            refs[role] = ModelRef(name=name, path=str(tiny_paths[component]))
        else:
            refs[role] = ModelRef(name=name, path=os.path.expanduser(name))
    if sd_config:
        refs["generator"] = ModelRef(refs["generator"].name, refs["generator"].path, os.path.expanduser(sd_config))
    return ModelChoice(**refs)


def _default_controlnet(control: str, generator: str, sd_config: str | None, backend: str | None) -> str:
    from sgid.backends import BACKENDS
    from sgid.stages.control import CONTROLS

    kind = CONTROLS.get(control)
    if backend is None and not generator.startswith("tiny:"):
        backend = detect_backend(ModelRef(generator, os.path.expanduser(generator), sd_config))
    family = backend or next((n for n in BACKENDS if BACKENDS.get(n).tiny_model == generator), None) or "sd"
    if generator.startswith("tiny:"):
        tiny = BACKENDS.get(family).tiny_controlnet
        if tiny:
            return tiny
    elif family in kind.controlnets:
        return kind.controlnets[family]
    raise SgidError(f"--control {control}: no default ControlNet for {generator} ({family}); pass --controlnet ID")


def is_tiny(choice: ModelChoice) -> bool:
    return any(ref.name.startswith("tiny:") for ref in (choice.captioner, choice.scorer, choice.generator))


#: What ``--device`` accepts, as the one-line refusals say it.
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def parse_device(device: str, kinds: tuple[str, ...] | None = None) -> torch.device | None:
    """``--device`` checked for spelling only (None for ``auto``); whether it exists here is resolve_device's.
    ``kinds``: the device types a command can use (``("cpu", "cuda")``); None: any torch device."""
    if device == "auto":
        return None
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or (kinds is not None and resolved.type not in kinds):
        allowed = DEVICE_HELP if kinds is None else _spelled(kinds)
        raise SgidError(f"invalid --device {device!r}; --device must be {allowed}")
    return resolved


def resolve_device(device: str = "auto", kinds: tuple[str, ...] | None = None) -> torch.device:
    """The torch device of ``--device``: ``auto`` is cuda when a GPU is there, else cpu; a device that is not
    there (cuda without a GPU) or not one of ``kinds`` is a one-line error."""
    resolved = parse_device(device, kinds)
    if resolved is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SgidError(f"--device {device} asked for, but no CUDA GPU is available; use --device cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise SgidError(f"--device {device} asked for, but this torch has no MPS (Apple GPU) device; use --device cpu")
    return resolved


def _spelled(kinds: tuple[str, ...]) -> str:
    """``("cpu", "cuda")`` -> ``"auto, cpu, cuda or cuda:N"``."""
    names = ["auto", *kinds, *(["cuda:N"] if "cuda" in kinds else [])]
    return f"{', '.join(names[:-1])} or {names[-1]}"


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def check_dtype(dtype: str) -> None:
    if dtype != "auto" and dtype not in _DTYPES:
        raise SgidError(f"invalid --dtype {dtype!r}; choose from: auto, {', '.join(_DTYPES)}")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    check_dtype(dtype)
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def quiet_hub_logging() -> None:
    """No hub progress bars, info logs or upstream deprecation noise: sgid shows its own progress and errors."""
    import diffusers
    import transformers

    # diffusers hands huggingface_hub an argument the hub deprecated: not the user's to fix
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


_OFFLINE_SIGNS = (
    "couldn't connect",
    "offline mode",
    "not a valid model identifier",
    "cannot find the requested files",
    "not fully cached",
    "cached snapshot",
)


def short_reason(exc: BaseException, width: int = 160) -> str:
    """An upstream loading error in a few words: never cut mid-word, the usual hub failure named plainly."""
    text = " ".join(str(exc).split())
    if any(sign in text.lower() for sign in _OFFLINE_SIGNS):
        return "not on this machine and the hub is unreachable"
    first = text.split(". ")[0].rstrip(".")
    return textwrap.shorten(first, width=width, placeholder=" …") or type(exc).__name__


class ModelLoads:
    """Tries every model a command needs and reports all that fail together, one short line each, instead of
    stopping at the first (a user fixing them one run at a time would wait for each load)."""

    def __init__(self) -> None:
        self.errors: list[ModelLoadError] = []

    def attempt(self, load: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return load(*args, **kwargs)
        except ModelLoadError as exc:
            self.errors.append(exc)
            return None

    def check(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ModelLoadError(f"{len(self.errors)} models cannot be loaded:", [str(e) for e in self.errors])


def _load(role: str, ref: ModelRef, flag: str, loader) -> Any:
    quiet_hub_logging()
    local = Path(ref.path)
    if ref.path.startswith((".", "/", "~")) and not local.exists():
        raise ModelLoadError(f"cannot load the {role} {ref.name!r}: no such file or folder {local}")
    try:
        return loader()
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a weights file cut short
        reason = short_reason(exc)
        broken = safetensors_problem(local) if ref.path.endswith(".safetensors") and local.is_file() else None
        if broken is not None:
            why = short_reason(Exception(broken), 100)
            hint = f"it is not a whole safetensors file ({why}): download or copy it again"
        elif ref.path.endswith(".safetensors") and local.is_file():
            hint = (
                "a single-file checkpoint needs its architecture's configs: pass --sd-config with a diffusers "
                "folder or hub id of the same model family (e.g. a local copy of stable-diffusion-v1-5)"
            )
        elif not local.exists():
            hint = f"pass {flag} DIR with a local copy (hf download {ref.name})"
        else:
            hint = f"check that {local} holds a complete checkpoint with .safetensors weights"
        raise ModelLoadError(f"cannot load the {role} {ref.name!r}: {reason}; {hint}") from None


def _load_transformers(role: str, ref: ModelRef, flag: str, model_cls, processor_cls, device, dtype):
    """A transformers model (safetensors only, no remote code) and its processor or tokenizer, on ``device``."""

    def load():
        model = model_cls.from_pretrained(ref.path, use_safetensors=True, trust_remote_code=False, dtype=dtype)
        processor = processor_cls.from_pretrained(ref.path, trust_remote_code=False)
        return model.to(device).eval(), processor

    return _load(role, ref, flag, load)


def _transformers_loader(
    role: str, flag: str, model_class: str, processor_class: str, maxsize: int
) -> Callable[[ModelRef, torch.device, torch.dtype], Any]:
    """The loader of one kind of transformers model, cached per process: ``load(ref, device, dtype)`` -> (model,
    processor or tokenizer); ``model_class`` and ``processor_class`` are transformers' class names."""

    @functools.lru_cache(maxsize=maxsize)
    def load(ref: ModelRef, device: torch.device, dtype: torch.dtype) -> Any:
        import transformers

        model_cls, processor_cls = getattr(transformers, model_class), getattr(transformers, processor_class)
        return _load_transformers(role, ref, flag, model_cls, processor_cls, device, dtype)

    return load


#: BLIP captioning model and processor.
load_captioner = _transformers_loader("captioner", "--captioner", "BlipForConditionalGeneration", "BlipProcessor", 8)
#: CLIP model and processor for image–text and image–image similarity.
load_scorer = _transformers_loader("scorer", "--scorer", "CLIPModel", "CLIPProcessor", 8)


def load_sd_pipeline(
    ref: ModelRef,
    kind: str,
    device: torch.device,
    dtype: torch.dtype,
    safety_checker: bool,
    *,
    private: bool = False,
    backend: str | None = None,
):
    """The diffusers pipeline of generation mode ``kind`` (``img2img``, ``text2img``, ``instruct``) for a checkpoint
    of the ``backend`` family (see :mod:`sgid.backends`; None: found from the checkpoint's configs), from a
    diffusers folder or hub id, or from a single ``.safetensors`` checkpoint file.

    Pipelines are cached per process, and the modes of one checkpoint share their modules (``text2img`` is
    built from ``img2img``'s). ``private=True`` returns an uncached copy that may be modified (textual
    inversion, LoRA) without affecting other users of the cached one.
    """
    family = backend_family(ref, backend, kind)
    if private:
        return _build_sd_pipeline(ref, kind, device, dtype, safety_checker, family, private=True)
    return _cached_sd_pipeline(ref, kind, device, dtype, safety_checker, family)


def backend_family(ref: ModelRef, backend: str | None, kind: str) -> Any:
    """The backend class for ``ref``: ``backend`` when given, else the one its configs name (SD 1.x/2.x when they
    say nothing, or InstructPix2Pix for the ``instruct`` mode); refuses a family that lacks mode ``kind``."""
    from sgid.backends import BACKENDS

    detected = detect_backend(ref)
    if backend is not None and detected is not None and detected != backend:
        BACKENDS.get(backend)
        raise SgidError(f"--backend {backend}, but {ref.name} is a {detected} checkpoint (its configs say so)")
    name = backend or detected or ("instruct_pix2pix" if kind == "instruct" else "sd")
    family = BACKENDS.get(name)
    if kind not in family.pipelines:
        modes = ", ".join(family.pipelines)
        raise SgidError(
            f"{ref.name} is a {family.name} checkpoint, which generates {modes}, not {kind}"
            + ("; pass an InstructPix2Pix model with --instruct-model" if kind == "instruct" else "")
        )
    return family


def _build_sd_pipeline(
    ref: ModelRef,
    kind: str,
    device: torch.device,
    dtype: torch.dtype,
    safety_checker: bool,
    family: Any,
    private: bool = False,
):
    import diffusers

    primary = next(iter(family.pipelines))  # the mode a checkpoint is loaded as; the others share its modules
    if kind != primary:
        base = load_sd_pipeline(ref, primary, device, dtype, safety_checker, private=private, backend=family.name)
        return pipeline_for_mode(base, family.pipelines[kind])
    if safety_checker and not family.has_safety_checker:
        raise SgidError(f"--safety-checker: {family.name} checkpoints have no safety checker")
    cls = getattr(diffusers, family.pipelines[kind])
    flag = "--instruct-model" if kind == "instruct" else "--sd-model"

    def load():
        kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, **family.load_kwargs(safety_checker)}
        if ref.path.endswith(".safetensors"):
            if not Path(ref.path).is_file():
                raise OSError(f"no such file {ref.path}")
            if ref.config:
                kwargs["config"] = ref.config
            pipe = cls.from_single_file(ref.path, **kwargs)
        elif ref.path.endswith((".ckpt", ".bin", ".pt", ".pth")):
            raise ValueError("only .safetensors checkpoints are loaded (pickle files can run code)")
        else:
            pipe = cls.from_pretrained(ref.path, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    return _load(f"{family.title} model", ref, flag, load)


_cached_sd_pipeline = functools.lru_cache(maxsize=4)(_build_sd_pipeline)


def pipeline_for_mode(base: Any, class_name: str, **modules: Any) -> Any:
    """A pipeline of diffusers class ``class_name`` over ``base``'s modules and settings (no second copy);
    ``modules`` replace some of them (e.g. a compiled UNet) in a new pipeline, ``base`` untouched."""
    import diffusers

    cls = getattr(diffusers, class_name)
    if type(base) is cls and not modules:
        return base
    return assemble_pipeline(cls, {**base.components, **modules}, base.config)


def assemble_pipeline(cls: Any, components: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    """A pipeline of class ``cls`` from ``components`` and the settings in ``config`` (e.g. SDXL's
    ``force_zeros_for_empty_prompt``) that its constructor takes."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in config.items() if k in accepted and k not in components}
    pipe = cls(**{k: v for k, v in components.items() if k in accepted}, **settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.lru_cache(maxsize=16)
def detect_backend(ref: ModelRef) -> str | None:
    """The backend a checkpoint's configs name, without loading weights: model_index.json's ``_class_name``,
    else its UNet config, else (a single file without --sd-config) the names of its weights. None when they
    cannot be read or name no registered family."""
    from sgid.backends import BACKENDS

    quiet_hub_logging()
    families = [BACKENDS.get(name) for name in BACKENDS]
    if ref.path.endswith(".safetensors") and not ref.config:
        keys = _safetensors_keys(ref.path)
        return next((f.name for f in families if keys and f.matches_checkpoint_keys(keys)), None)
    folder = ref.config if ref.path.endswith(".safetensors") else ref.path
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    try:
        class_name = DiffusionPipeline.load_config(folder).get("_class_name")
    except (OSError, ValueError):
        class_name = None
    for family in families:
        if class_name in family.checkpoint_classes:
            return family.name
    try:
        unet: Any = UNet2DConditionModel.load_config(folder, subfolder="unet")
    except (OSError, ValueError):
        return None
    return next((f.name for f in families if f.matches_unet(unet)), None)


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (its header must parse and cover the data: a file cut short
    by a copy or a damaged disk does not; nor is a file of another format), or None. The header is read, no
    tensor is."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (OSError, SafetensorError) as exc:
        return str(exc)
    return None


def _safetensors_keys(path: str) -> frozenset[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return frozenset(handle.keys())
    except (OSError, SafetensorError):
        return frozenset()  # the loader reports an unreadable file


@functools.lru_cache(maxsize=4)
def load_controlnet(ref: ModelRef, device: torch.device, dtype: torch.dtype):
    """A ControlNet (``--controlnet``): hub id, diffusers folder or single ``.safetensors`` file."""

    def load():
        from diffusers import ControlNetModel

        if ref.path.endswith(".safetensors"):
            if not Path(ref.path).is_file():
                raise OSError(f"no such file {ref.path}")
            model = ControlNetModel.from_single_file(ref.path, dtype=dtype)
        elif ref.path.endswith((".ckpt", ".bin", ".pt", ".pth")):
            raise ValueError("only .safetensors checkpoints are loaded (pickle files can run code)")
        else:
            model = ControlNetModel.from_pretrained(ref.path, use_safetensors=True, dtype=dtype)
        return model.to(device).eval()

    quiet_hub_logging()
    return _load("ControlNet", ref, "--controlnet", load)


#: A depth-estimation model (``--control depth --control-model``) and its image processor.
load_depth_model = _transformers_loader(
    "depth model", "--control-model", "AutoModelForDepthEstimation", "AutoImageProcessor", 2
)


@functools.lru_cache(maxsize=2)
def load_text_model(ref: ModelRef, device: torch.device, dtype: torch.dtype):
    """A local causal language model and its tokenizer (left padding), for the text-generation steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = _load_transformers(
        "text model", ref, "--text-model", AutoModelForCausalLM, AutoTokenizer, device, dtype
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def model_id(ref: ModelRef) -> str:
    """The name a manifest and the caches record for a transformers model: its name plus its hub revision when
    known (read from its config, no weights loaded), so caches never mix two versions of a model."""
    from transformers import AutoConfig

    quiet_hub_logging()
    try:
        revision = getattr(AutoConfig.from_pretrained(ref.path, trust_remote_code=False), "_commit_hash", None)
    except (OSError, ValueError):
        revision = None  # the loader reports a missing model when it loads it
    return f"{ref.name}@{revision}" if revision else ref.name


@dataclass(frozen=True)
class Geometry:
    """What batching needs to know of a generator: its native image size and the multiple sizes round to."""

    resolution: int | None  # None: not generated (copies); sizes are the images' own
    size_multiple: int = 8


@functools.lru_cache(maxsize=8)
def sd_geometry(ref: ModelRef) -> Geometry:
    """A Stable Diffusion checkpoint's geometry from its UNet and VAE configs, without loading weights
    (a single-file checkpoint without --sd-config is loaded on the CPU to find out)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    quiet_hub_logging()
    folder = ref.config if ref.path.endswith(".safetensors") else ref.path
    if folder is None:
        pipe = load_sd_pipeline(ref, "img2img", torch.device("cpu"), torch.float32, False)
        return Geometry(int(pipe.unet.config.sample_size * pipe.vae_scale_factor), int(pipe.vae_scale_factor))
    try:
        unet: Any = UNet2DConditionModel.load_config(folder, subfolder="unet")
        vae: Any = AutoencoderKL.load_config(folder, subfolder="vae")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the configs of the Stable Diffusion model {ref.name!r}: {exc}") from None
    multiple = 2 ** (len(vae["block_out_channels"]) - 1)
    return Geometry(int(unet["sample_size"]) * multiple, multiple)
