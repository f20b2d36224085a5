"""The augmentation run's settings, validated up front (before any model is loaded).

Defaults are the paper's (§4.2 and appendix I); a test pins each of them. ``AugmentConfig.build`` layers
defaults ← ``--preset`` ← explicit options, so explicit flags always win over a preset. The options of one
method are declared by the method (``Method.Options`` in :mod:`sgid.methods`); their fields here take the
declared defaults and are checked as declared. Importing this module loads no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgid.errors import SgidError
from sgid.methods import METHODS, chain_parts, method_options
from sgid.methods.base import TextModelOptions
from sgid.methods.boomerang import BoomerangOptions
from sgid.methods.diverse_caption import DiverseCaptionOptions
from sgid.methods.instruct import InstructOptions
from sgid.methods.perturb import PerturbOptions
from sgid.methods.retrieval import RetrievalOptions
from sgid.methods.text2img import Text2ImgOptions
from sgid.options import check_fields
from sgid.presets import PRESETS
from sgid.stages.guidance import DEFAULT_FLOOR, GuidanceMap, parse_floor, parse_guidance
from sgid.stages.prompt import DEFAULT_LABEL_TEMPLATE, PROMPT_MODES, WEIGHTINGS

CAPTION_STRATEGIES = ("clip", "beam", "nucleus")
SIMILARITY_MODES = ("cosine", "softmax")  # s*: see sgid.stages.score
VAE_TILING = ("auto", "on", "off")
ON_FLAGGED = ("drop", "retry")
MAX_MULTIPLIER = 10_000  # augmentations per image: far above any use, below a plan that would not fit in memory

#: Settings that do not change what a run produces; they may differ when a run is resumed.
EXECUTION_ONLY = frozenset(
    {
        "batch_size",
        "device",
        "quiet",
        "overwrite",
        "cache_dir",
        "out_dir",
        "caption_cache",
        "engine",
        "workers",
        "gpus_per_worker",
        "ray_address",
        "shard_size",
        "compile",
    }
)


@dataclass(frozen=True)
class CaptionSettings:
    """BLIP decoding settings (:mod:`sgid.stages.caption`). Defaults follow the paper (§4.2, appendix I); see
    docs for the beam choice.

    The paper asks for 10 beam-search captions with ``num_beams=3``, but beam search cannot return more
    sequences than it keeps beams. The default is the top 10 hypotheses of a 10-beam search; set
    ``num_beams=3, beam_captions=3`` for the paper's literal beam width.
    """

    beam_captions: int = 10
    num_beams: int = 10
    nucleus_captions: int = 10
    top_p: float = 0.9
    top_k: int = 0  # 0 disables top-k, so sampling is pure nucleus sampling
    min_length: int = 5  # as BLIP's generate(): counts the start token
    max_length: int = 20
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.beam_captions < 0 or self.nucleus_captions < 0:
            raise SgidError(
                f"invalid --beam-captions {self.beam_captions} / --nucleus-captions {self.nucleus_captions}: "
                "must be >= 0"
            )
        if self.beam_captions + self.nucleus_captions == 0:
            raise SgidError("--beam-captions 0 and --nucleus-captions 0: at least one caption is needed")
        if self.beam_captions > self.num_beams:
            raise SgidError(
                f"beam search cannot return {self.beam_captions} captions with num_beams={self.num_beams}: "
                f"it returns at most one caption per beam; raise --num-beams or lower --beam-captions"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise SgidError(f"invalid --top-p {self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise SgidError(f"invalid --top-k {self.top_k}: must be >= 0 (0 disables it)")
        _check_finite(self)
        if not self.repetition_penalty > 0:
            raise SgidError(f"invalid --repetition-penalty {self.repetition_penalty}: must be > 0 (1 is no penalty)")
        if not 1 <= self.min_length <= self.max_length:
            raise SgidError(
                f"invalid --min-length {self.min_length} / --max-length {self.max_length}: "
                "need 1 <= min-length <= max-length"
            )


@dataclass(frozen=True)
class AugmentConfig:
    input_dir: Path
    out_dir: Path
    method: str = "sgid"
    # models
    models: str = "default"
    captioner: str | None = None
    scorer: str | None = None
    sd_model: str | None = None
    sd_config: str | None = None  # configs for a single-file --sd-model (diffusers folder or hub id)
    backend: str | None = None  # the --sd-model's family (sgid.backends); None: found from its configs
    instruct_model: str | None = InstructOptions.instruct_model
    safety_checker: bool = False
    on_flagged: str = "drop"  # what a flagged image gets: dropped (listed), or made again with the next seed
    flagged_tries: int = 3  # --on-flagged retry: tries in all, the first included
    device: str = "auto"
    dtype: str = "auto"
    # step 1: captions and similarity (§3.1)
    caption: str = "clip"
    captions: CaptionSettings = field(default_factory=CaptionSettings)
    similarity: str = "cosine"
    caption_batch_size: int = 8
    # step 2: prompt, weighting, guidance, noise (§3.2)
    prompt: str = "complete"
    label_template: str = DEFAULT_LABEL_TEMPLATE
    prompt_weighting: bool = True
    weighting: str = "literal"  # how w_l, w_c act on the text encoding: literal (the paper), compel, mean-restore
    label_weight: float = 1.5
    caption_weight: float = 0.9
    guidance: str = "paper"
    guidance_floor: float | None = DEFAULT_FLOOR  # applied g = max(f(s*), floor); None: f(s*) as it is
    diffusers_guidance: bool = False
    negative_prompt: str = ""
    noise: float = 0.5
    steps: int = 100
    multiplier: int = 1
    seed: int = 0
    # input / output
    preset: str | None = None
    label_names: Path | None = None
    max_pixels: int = 89_478_485
    min_side: int = 8
    keep_generation_size: bool = False
    include_originals: bool = False
    # the other methods' own options, as each declares them (defaults, help and checks there)
    templates: tuple[str, ...] = Text2ImgOptions.templates
    text_model: str | None = TextModelOptions.text_model
    sentences: int = TextModelOptions.sentences
    summarize: bool = DiverseCaptionOptions.summarize
    instructions: tuple[str, ...] = InstructOptions.instructions
    image_guidance: float = InstructOptions.image_guidance
    boomerang_prompt: str = BoomerangOptions.boomerang_prompt
    pool: Path | None = RetrievalOptions.pool
    retrieval_query: str = RetrievalOptions.retrieval_query
    duplicate_threshold: float = RetrievalOptions.duplicate_threshold
    exclude: tuple[Path, ...] = RetrievalOptions.exclude
    # learned concepts and LoRA: any method that prompts Stable Diffusion
    concepts: Path | None = None  # learned textual-inversion concepts (sgid learn-concepts)
    lora: str | None = None  # LoRA weights for the Stable Diffusion UNet/text encoder
    lora_scale: float = 1.0
    perturb_probability: float = PerturbOptions.perturb_probability  # (declared by the perturbation methods)
    # ControlNet-guided img2img (docs/backends.md): a condition image computed from each source guides every step
    control: str | None = None  # the condition kind (sgid.stages.control): canny, depth; None: no ControlNet
    controlnet: str | None = None  # hub id, folder or .safetensors file; None: the kind's ControlNet of the family
    control_scale: float = 0.8  # controlnet_conditioning_scale (StableDiffusionControlNetImg2ImgPipeline's default)
    canny_low: int = 100  # canny: hysteresis thresholds (lllyasviel's annotator and diffusers' examples)
    canny_high: int = 200
    control_model: str | None = None  # depth: the depth-estimation model; None: Intel/dpt-hybrid-midas
    # execution
    batch_size: int = 4
    cache_dir: Path | None = None
    caption_cache: bool = True
    overwrite: bool = False
    quiet: bool = False
    # engines (docs/scaling.md): who runs the work; never what it produces
    engine: str = "local"
    workers: int | None = None  # None: one per GPU (ray), or 1
    gpus_per_worker: float | None = None  # None: 1 on a machine with GPUs, else 0
    ray_address: str | None = None  # join this Ray cluster instead of starting a local one
    shard_size: int = 64  # items per unit of work handed to a worker
    # the one-GPU fast path (docs/performance.md says which of these change pixels)
    compile: bool = False  # torch.compile the UNet (minutes of warm-up, then faster steps)
    vae_tiling: str = "auto"  # decode/encode images larger than the model's size in tiles: auto (on CUDA), on, off

    def __post_init__(self) -> None:
        _check(self.noise, "--noise", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
        _check(self.steps, "--steps", lambda v: v >= 1, "must be >= 1")
        if self.cache_dir is not None and self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise SgidError(f"--cache-dir {self.cache_dir} is a file, not a folder")
        _check(self.multiplier, "--multiplier", lambda v: 1 <= v <= MAX_MULTIPLIER, f"must be in [1, {MAX_MULTIPLIER}]")
        _check(self.batch_size, "--batch-size", lambda v: v >= 1, "must be >= 1")
        _check(self.caption_batch_size, "--caption-batch-size", lambda v: v >= 1, "must be >= 1")
        _check(self.label_weight, "--label-weight", lambda v: v >= 0, "must be >= 0")
        _check(self.caption_weight, "--caption-weight", lambda v: v >= 0, "must be >= 0")
        _check(self.max_pixels, "--max-pixels", lambda v: v >= 1, "must be >= 1")
        _check(self.min_side, "--min-side", lambda v: v >= 1, "must be >= 1")
        _choice(self.caption, "--caption", CAPTION_STRATEGIES)
        _choice(self.on_flagged, "--on-flagged", ON_FLAGGED)
        _check(self.flagged_tries, "--flagged-tries", lambda v: v >= 1, "must be >= 1")
        if self.on_flagged == "retry" and not self.safety_checker:
            raise SgidError("--on-flagged retry needs --safety-checker (without it nothing is flagged)")
        _choice(self.prompt, "--prompt", PROMPT_MODES)
        _choice(self.similarity, "--similarity", SIMILARITY_MODES)
        if self.preset is not None:
            PRESETS.get(self.preset)
        parts = chain_parts(self.method)  # a chain's stages are configured and checked one by one
        if self.exclude and "retrieval" not in parts:
            raise SgidError("--exclude applies to --method retrieval (it drops pool images near the excluded images)")
        if len(parts) == 1:
            METHODS.get(self.method)(self).check()
        from sgid.models.loading import MODEL_PRESETS, check_dtype, parse_device

        MODEL_PRESETS.get(self.models)
        parse_device(self.device)  # spelling only: whether the device is there is checked where the run executes
        check_dtype(self.dtype)
        if self.backend is not None:
            _check_backend(self.backend, parts)
        parse_guidance(self.guidance)
        parse_floor(self.guidance_floor)
        WEIGHTINGS.get(self.weighting)
        if "{label}" not in self.label_template:
            raise SgidError(f"--label-template must contain {{label}}: {self.label_template!r}")
        check_fields(self, method_options())  # every method's own options, as each declares them
        if self.caption == "beam" and not self.captions.beam_captions:
            raise SgidError("--caption beam needs beam captions (--beam-captions > 0)")
        if self.caption == "nucleus" and not self.captions.nucleus_captions:
            raise SgidError("--caption nucleus needs nucleus captions (--nucleus-captions > 0)")
        _check(self.shard_size, "--shard-size", lambda v: v >= 1, "must be >= 1")
        _choice(self.vae_tiling, "--vae-tiling", VAE_TILING)
        _check_control(self, parts)
        if self.workers is not None:
            _check(self.workers, "--workers", lambda v: v >= 1, "must be >= 1")
        if self.gpus_per_worker is not None:
            _check(
                self.gpus_per_worker,
                "--gpus-per-worker",
                lambda v: 0 <= v <= 1 or v > 1 and float(v).is_integer(),
                "must be 0 (workers on CPUs), a fraction of a GPU in (0, 1] or a whole number of GPUs",
            )
        _check_finite(self)  # after the range checks, whose messages say more where they apply
        from sgid.engines import ENGINES

        ENGINES.get(self.engine).check(self)

    @classmethod
    def build(
        cls, input_dir: str | Path, out_dir: str | Path, preset: str | None = None, **options: Any
    ) -> AugmentConfig:
        """Defaults, then the method's own defaults, then the preset's settings, then every option not ``None``."""
        caption_fields = {f.name for f in dataclasses.fields(CaptionSettings)}
        caption_options = {k: options.pop(k) for k in list(options) if k in caption_fields}
        method = chain_parts(options.get("method") or "sgid")[-1]
        settings: dict[str, Any] = dict(METHODS.get(method).defaults)
        settings.update(PRESETS.get(preset) if preset else {})
        settings.update({k: v for k, v in options.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown augment options: {', '.join(unknown)}")
        captions = CaptionSettings(**{k: v for k, v in caption_options.items() if v is not None})
        for name in ("templates", "instructions"):
            if isinstance(settings.get(name), str):
                settings[name] = (settings[name],)
            elif settings.get(name) is not None:
                settings[name] = tuple(settings[name])
        for name in (
            "captioner",
            "scorer",
            "sd_model",
            "sd_config",
            "instruct_model",
            "text_model",
            "lora",
            "controlnet",
            "control_model",
        ):
            if settings.get(name) is not None:
                settings[name] = str(settings[name])
        for name in ("label_names", "cache_dir", "pool", "concepts"):
            if settings.get(name) is not None:
                settings[name] = Path(settings[name])
        if settings.get("exclude") is not None:
            exclude = settings["exclude"]
            settings["exclude"] = tuple(Path(p) for p in ([exclude] if isinstance(exclude, (str, Path)) else exclude))
        if isinstance(settings.get("guidance_floor"), str):
            settings["guidance_floor"] = parse_floor(settings["guidance_floor"])
        if isinstance(settings.get("guidance"), (int, float)):
            settings["guidance"] = repr(float(settings["guidance"]))
        return cls(input_dir=Path(input_dir), out_dir=Path(out_dir), preset=preset, captions=captions, **settings)

    @property
    def guidance_map(self) -> GuidanceMap:
        return parse_guidance(self.guidance, self.guidance_floor)

    @property
    def weights(self) -> tuple[float, float]:
        """(w_l, w_c) actually applied: (1, 1) when prompt weighting is off."""
        return (self.label_weight, self.caption_weight) if self.prompt_weighting else (1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def identity(self) -> dict[str, Any]:
        """The settings that determine the output; a resumed run must match them exactly."""
        data = self.to_dict()
        for name in EXECUTION_ONLY:
            data.pop(name, None)
        data["input_dir"] = str(Path(self.input_dir).resolve())
        if self.on_flagged == "drop":  # what every run did before --on-flagged: such runs resume as they were
            del data["on_flagged"], data["flagged_tries"]
        # VAE tiling changes the pixels of images larger than the model's size, so on/off are part of the identity;
        # the default is left out, as before --vae-tiling counted: such runs resume as they were
        if self.vae_tiling == "auto":
            del data["vae_tiling"]
        # learned weights are identified by content, so retrained ones at the same path are a new run
        if self.concepts is not None:
            from sgid.concepts import concepts_fingerprint

            data["concepts_sha256"] = concepts_fingerprint(self.concepts)
        if self.lora is not None:
            from sgid.concepts import lora_fingerprint

            data["lora_sha256"] = lora_fingerprint(self.lora)
        return data


def _check_backend(name: str, methods: list[str]) -> None:
    """Refuse a ``--backend`` that cannot make what the methods ask of ``--sd-model``."""
    from sgid.backends import BACKENDS

    family = BACKENDS.get(name)
    for method in methods:
        for kind in METHODS.get(method).generator_kinds:
            if kind != "instruct" and kind not in family.pipelines:
                raise SgidError(
                    f"--backend {name} generates {', '.join(family.pipelines)}; --method {method} needs {kind}"
                )


def _check_control(config: AugmentConfig, methods: list[str]) -> None:
    """``--control`` guides image-to-image generation: refuse it where nothing is, and its flags without it."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    changed = [n for n in ("controlnet", "control_model", "control_scale") if getattr(config, n) != defaults[n]]
    if config.control is None and changed:
        raise SgidError(f"--{changed[0].replace('_', '-')} needs --control KIND (canny, depth)")
    if config.control != "canny" and (config.canny_low, config.canny_high) != (
        defaults["canny_low"],
        defaults["canny_high"],
    ):
        raise SgidError("--canny-low and --canny-high apply to --control canny only")
    if config.control is None:
        return
    from sgid.stages.control import CONTROLS

    kind = CONTROLS.get(config.control)
    if config.control_model is not None and not kind.needs_model:
        raise SgidError(f"--control-model: --control {config.control} uses no model")
    _check(config.control_scale, "--control-scale", lambda v: v >= 0, "must be >= 0")
    if not 0 <= config.canny_low <= config.canny_high:
        raise SgidError(
            f"invalid --canny-low {config.canny_low} / --canny-high {config.canny_high}: need 0 <= low <= high"
        )
    if not any("img2img" in METHODS.get(m).generator_kinds for m in methods):
        raise SgidError(
            f"--control guides image-to-image generation from a source image; --method {config.method} has none "
            "(use sgid, diverse_caption or boomerang)"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _check(value: float, flag: str, ok, rule: str) -> None:
    if isinstance(value, float) and math.isnan(value) or not ok(value):
        raise SgidError(f"invalid {flag} {value!r}: {rule}")


def _check_finite(settings: Any) -> None:
    """No setting is NaN or infinite: a number that is not one would pass range checks and fail deep in a run
    (a manifest cannot hold it)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise SgidError(f"invalid --{f.name.replace('_', '-')} {value!r}: must be a finite number")


def _choice(value: str, flag: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SgidError(f"invalid {flag} {value!r}; choose from: {', '.join(choices)}")
