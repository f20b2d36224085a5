"""The stages of a run, with their models, loaded once and handed to the pipeline.

Only what the method needs is loaded: no BLIP/CLIP when no captions are used, no img2img pipeline for
text-to-image methods. Each generator kind a method asks for (``img2img``, ``text2img``, ``instruct``) is a mode
of a backend (:mod:`sgid.backends`): the family named by ``--backend`` or found from the checkpoint. The
perturbations (``randaugment``, ``random_erasing``, ``cutmix``) load no model; copy items (retrieval) no stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from sgid.backends import Backend, GenerationRequest
from sgid.backends.controlnet import ControlNetGuide
from sgid.concepts import Prepared, prepare_pipeline
from sgid.concepts.apply import concepts_lora
from sgid.errors import SgidError, need
from sgid.images import load_rgb
from sgid.models.loading import (
    ModelChoice,
    ModelLoads,
    ModelRef,
    backend_family,
    load_captioner,
    load_controlnet,
    load_depth_model,
    load_scorer,
    load_sd_pipeline,
    load_text_model,
    model_id,
    pipeline_for_mode,
    resolve_device,
    resolve_dtype,
)
from sgid.sample import COPY
from sgid.stages.caption import Captioner
from sgid.stages.control import CONTROLS, Control
from sgid.stages.perturb import IMAGE_PERTURBATIONS, ImagePerturbation
from sgid.stages.score import ClipScorer
from sgid.stages.text import TextGenerator

if TYPE_CHECKING:
    from sgid.config import AugmentConfig
    from sgid.methods.base import Method
    from sgid.sample import Sample

Outputs = list[tuple[Image.Image, bool]]  # (image, flagged by the safety checker)


@dataclass
class GenerateStage:
    """Encodes a batch's prompts (weighted) with its backend and generates the batch (ControlNet-guided, with
    each source's condition image, when ``control`` is set)."""

    backend: Backend
    model_id: str
    steps: int
    control: Control | None = None

    @property
    def resolution(self) -> int:
        return int(self.backend.resolution)

    @property
    def size_multiple(self) -> int:
        return int(self.backend.size_multiple)

    def __call__(self, batch: list[Sample], pixels: list[Image.Image] | None, size: tuple[int, int]) -> Outputs:
        prompts = [s.prompt for s in batch]
        assert all(p is not None for p in prompts)
        conditioning = self.backend.encode(
            prompts,  # type: ignore[arg-type]
            [(s.label_weight, s.caption_weight) for s in batch],
            [s.negative_prompt for s in batch],
        )
        request = GenerationRequest(
            images=pixels,
            conditioning=conditioning,
            guidance=[s.guidance_scale for s in batch],  # type: ignore[misc]
            strength=batch[0].strength,
            steps=self.steps,
            seeds=[s.seed for s in batch],
            size=size,
            control_images=None if self.control is None or pixels is None else self.control(pixels),
        )
        output = self.backend.generate(request)
        return list(zip(output.images, output.nsfw, strict=True))

    def control_fields(self) -> dict[str, Any]:
        """The ControlNet guidance as manifest fields: condition kind and parameters, scale, ControlNet."""
        guide = self.backend.guide
        if self.control is None or not isinstance(guide, ControlNetGuide):
            return {}
        return {"control": self.control.describe(), "control_scale": guide.scale, "controlnet_model": guide.name}


def runs_diffusion(kind: str) -> bool:
    """Whether items of ``kind`` run a diffusion model (have a resolution and denoising steps); False for
    copies (retrieval reads pool images) and the perturbations (transform the source)."""
    return kind != COPY and kind not in IMAGE_PERTURBATIONS


@dataclass
class PerturbStage:
    """Applies a materialised perturbation (``sgid.stages.perturb``) to each sample's source at its own size;
    CutMix also reads the partner the plan chose. No model: the same bytes on any device."""

    perturbation: ImagePerturbation
    max_pixels: int
    min_side: int
    resolution = None
    size_multiple = 1

    @property
    def model_id(self) -> str:
        return self.perturbation.implementation

    def __call__(self, batch: list[Sample], pixels: list[Image.Image] | None, size: tuple[int, int]) -> Outputs:
        return [(self.one(sample), False) for sample in batch]

    def one(self, sample: Sample) -> Image.Image:
        assert sample.info is not None
        image = self.read(sample.source.path, sample.info.sha256, sample.source.relpath)
        params = sample.extra["perturbation_params"]
        if params is None:  # the probability coin said no: the image as it is
            return image
        partner = None
        if self.perturbation.needs_partner:
            partner = self.read(
                Path(sample.extra["partner_file"]), sample.extra["partner_sha256"], sample.extra["partner"]
            )
        return self.perturbation.apply(image, params, partner)

    def read(self, path: Path, sha256: str, relpath: str) -> Image.Image:
        loaded = load_rgb(path, max_pixels=self.max_pixels, min_side=self.min_side)
        if loaded.sha256 != sha256:
            raise SgidError(f"{relpath} changed while the run was going; rerun to pick it up")
        return loaded.image


@dataclass
class Stages:
    captioner: Captioner | None = None
    scorer: ClipScorer | None = None
    captioner_id: str | None = None
    scorer_id: str | None = None
    text: TextGenerator | None = None
    generators: dict[str, Any] = field(default_factory=dict)
    concept_tokens: dict[str, str] | None = None  # class folder -> learned concept token (--concepts)
    concept_labels: dict[str, str] | None = None  # class folder -> what SD prompts say instead of the label
    concepts_sha256: str | None = None  # the --concepts folder's fingerprint (recorded in every manifest row)

    def generate(self, batch: list[Sample], pixels: list[Image.Image] | None, size: tuple[int, int]) -> Outputs:
        return self.generators[batch[0].kind](batch, pixels, size)

    def resolution(self, kind: str) -> int | None:
        return self.generators[kind].resolution

    def size_multiple(self, kind: str) -> int:
        return int(self.generators[kind].size_multiple)

    def generator_id(self, kind: str) -> str:
        return str(self.generators[kind].model_id)

    def backend(self, kind: str) -> str:
        return str(self.generators[kind].backend.name)

    def control_fields(self, kind: str) -> dict[str, Any]:
        """The ControlNet guidance of ``kind``'s items as manifest fields (none without ``--control``)."""
        stage = self.generators.get(kind)
        return stage.control_fields() if isinstance(stage, GenerateStage) else {}


#: What a process may load, each only when the method needs it: ``captioner`` (BLIP), ``scorer`` (CLIP, for
#: similarities), ``text`` (the language model some methods prepare with), ``generation`` (the generators).
PARTS = ("captioner", "scorer", "text", "generation")


def load_stages(
    config: AugmentConfig,
    choice: ModelChoice,
    method: Method,
    parts: tuple[str, ...] = PARTS,
    *,
    device: str | None = None,
    into: Stages | None = None,
) -> Stages:
    """The stages ``method`` needs among ``parts``, on ``device`` (default: the configured one), added to
    ``into`` when given (a worker loads what each kind of task needs when it first gets one). Every model is
    tried first: all that cannot be loaded are reported together, before any stage is built."""
    if "instruct" in method.generator_kinds and config.concepts is not None and concepts_lora(config.concepts):
        raise SgidError(
            f"--concepts {config.concepts} holds LoRA weights for Stable Diffusion's UNet, and instruct_pix2pix "
            "generates with InstructPix2Pix's: use a textual-inversion concepts folder with this method"
        )
    resolved = resolve_device(device or config.device)
    dtype = resolve_dtype(config.dtype, resolved)
    stages = into or Stages()
    # the names manifests and caches record, known without loading (a worker may never load these models)
    if method.needs_captions():
        stages.captioner_id = stages.captioner_id or model_id(choice.captioner)
    if method.needs_captions() or method.needs_scorer():
        stages.scorer_id = stages.scorer_id or model_id(choice.scorer)
    loads = ModelLoads()
    blip = clip = text = None
    if "captioner" in parts and method.needs_captions() and stages.captioner is None:
        blip = loads.attempt(load_captioner, choice.captioner, resolved, dtype)
    if "scorer" in parts and (method.needs_captions() or method.needs_scorer()) and stages.scorer is None:
        clip = loads.attempt(load_scorer, choice.scorer, resolved, dtype)
    if "text" in parts and method.needs_text_model() and stages.text is None:
        text_ref = need(choice.text, f"--method {method.name} needs --text-model with these options")
        text = loads.attempt(load_text_model, text_ref, resolved, dtype)
    generation = "generation" in parts and not stages.generators
    if generation:  # the pipelines are cached per process: building the stages below reuses them
        for ref, base_kind in _checkpoints(choice, method):
            loads.attempt(load_sd_pipeline, ref, base_kind, resolved, dtype, config.safety_checker)
        if config.control is not None and choice.controlnet is not None:
            loads.attempt(load_controlnet, choice.controlnet, resolved, dtype)
        if config.control is not None and choice.control_model is not None:
            loads.attempt(load_depth_model, choice.control_model, resolved, dtype)
    loads.check()
    if blip is not None:
        stages.captioner = Captioner(blip[0], blip[1], config.captions)
    if clip is not None:
        stages.scorer = ClipScorer(clip[0], clip[1])
    if text is not None:
        stages.text = TextGenerator(text[0], text[1])
    if generation:
        _load_generators(stages, config, choice, method, resolved, dtype)
    return stages


def used_models(choice: ModelChoice, method: Method) -> dict[str, ModelRef]:
    """The models ``method`` runs with (role -> model), as :func:`load_stages` loads them: what ``run.json``
    records, so a run's provenance never names a model it did not use."""
    used: dict[str, ModelRef] = {}
    if method.needs_captions():
        used["captioner"] = choice.captioner
    if method.needs_captions() or method.needs_scorer():
        used["scorer"] = choice.scorer
    if method.needs_text_model() and choice.text is not None:
        used["text"] = choice.text
    for ref, base_kind in _checkpoints(choice, method):
        used["instruct" if base_kind == "instruct" else "generator"] = ref
    if "img2img" in method.generator_kinds:  # --control guides img2img (the choice holds them only then)
        used.update({role: ref for role in ("controlnet", "control_model") if (ref := getattr(choice, role))})
    return used


def _checkpoints(choice: ModelChoice, method: Method) -> list[tuple[ModelRef, str]]:
    """The (checkpoint, pipeline kind) pairs the method's generators are built on."""
    kinds = [k for k in method.generator_kinds if runs_diffusion(k)]
    pairs = [(choice.instruct, "instruct") if k == "instruct" else (choice.generator, "img2img") for k in kinds]
    return list(dict.fromkeys(pairs))


def _load_generators(
    stages: Stages, config: AugmentConfig, choice: ModelChoice, method: Method, device: Any, dtype: Any
) -> None:
    prepared: dict[tuple[ModelRef, str], Prepared] = {}  # one (possibly modified) pipeline per checkpoint
    for kind in method.generator_kinds:
        if kind in IMAGE_PERTURBATIONS:
            stages.generators[kind] = PerturbStage(IMAGE_PERTURBATIONS.get(kind)(), config.max_pixels, config.min_side)
            continue
        ref = choice.instruct if kind == "instruct" else choice.generator
        family = backend_family(ref, None if kind == "instruct" else config.backend, kind)
        if config.concepts is not None and not family.uses_concepts:
            raise SgidError(
                f"--concepts {config.concepts} was learned for Stable Diffusion 1.x/2.x (sgid learn-concepts); "
                f"the {family.name} backend cannot use it"
            )
        if (ref, family.name) not in prepared:
            primary = next(iter(family.pipelines))
            pipe = load_sd_pipeline(ref, primary, device, dtype, config.safety_checker, backend=family.name)
            prepared[(ref, family.name)] = prepare(pipe, config)
        base = prepared[(ref, family.name)]
        pipe = speed_up(base.pipe, device, compile=config.compile and kind != "instruct", vae_tiling=config.vae_tiling)
        stages.concept_tokens = base.tokens or stages.concept_tokens
        stages.concept_labels = base.labels or stages.concept_labels
        stages.concepts_sha256 = base.concepts_sha256 or stages.concepts_sha256
        options: dict[str, Any] = {"diffusers_guidance": config.diffusers_guidance, "weighting": config.weighting}
        if kind == "instruct":
            options["image_guidance"] = config.image_guidance
        control = None
        if kind == "img2img" and config.control is not None:
            options["guide"] = _controlnet_guide(config, choice, family, base.pipe, device, dtype)
            control = _control(config, choice, device, dtype)
        backend = family(pipeline_for_mode(pipe, family.pipelines[kind]), kind, **options)
        stages.generators[kind] = GenerateStage(backend, ref.name, config.steps, control)


def _controlnet_guide(
    config: AugmentConfig, choice: ModelChoice, family: Any, pipe: Any, device: Any, dtype: Any
) -> ControlNetGuide:
    ref = need(choice.controlnet, "--control needs a ControlNet (--controlnet)")
    if not family.control_pipelines.get("img2img"):
        raise SgidError(f"--control: the {family.name} backend has no ControlNet-guided img2img")
    controlnet = speed_up_model(load_controlnet(ref, device, dtype), device)  # as the UNet it feeds
    guide = ControlNetGuide(controlnet, config.control_scale, ref.name)
    guide.check(pipe.unet.config)
    return guide


def _control(config: AugmentConfig, choice: ModelChoice, device: Any, dtype: Any) -> Control:
    """The ``--control`` kind with its parameters (and model)."""
    kind = CONTROLS.get(str(config.control))
    model = None
    if kind.needs_model:
        ref = need(choice.control_model, f"--control {config.control} needs --control-model")
        model = (*load_depth_model(ref, device, dtype), ref.name)
    return kind.from_config(config, model)


def speed_up(pipe: Any, device: Any, *, compile: bool = False, vae_tiling: str = "auto") -> Any:
    """The one-GPU fast path; returns the pipeline to generate with.

    Everywhere: PyTorch's scaled-dot-product attention in every attention layer; the VAE encoding and decoding
    one image at a time (its memory stays flat with the batch size, and an image's pixels do not depend on the
    batch it was decoded in). On CUDA also the UNet and the VAE in channels-last memory format; a ControlNet gets
    the UNet's treatment (:func:`speed_up_model`). ``vae_tiling`` (``auto``: on CUDA) encodes and decodes images
    larger than the model's size in tiles. ``compile``: the UNet through ``torch.compile`` in a fork of the
    pipeline (the shared one is untouched); the first batch of each shape compiles (minutes), later ones run
    faster.
    """
    import torch

    cuda = getattr(device, "type", str(device)) == "cuda"
    for module in (pipe.unet, pipe.vae):
        speed_up_model(module, device)
    pipe.vae.enable_slicing()
    if vae_tiling == "on" or (vae_tiling == "auto" and cuda):
        pipe.vae.enable_tiling()  # takes effect only above the VAE's tile size (the model's image size)
    else:
        pipe.vae.disable_tiling()
    if compile:
        return pipeline_for_mode(pipe, type(pipe).__name__, unet=torch.compile(pipe.unet))
    return pipe


def speed_up_model(module: Any, device: Any) -> Any:
    """The fast path of one model that runs at every step (the UNet, the VAE, a ControlNet), changed in place:
    PyTorch's scaled-dot-product attention in its attention layers and, on CUDA, the channels-last memory
    format. Returns ``module``."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if any(type(p) is AttnProcessor for p in module.attn_processors.values()):
        module.set_attn_processor(AttnProcessor2_0())  # the classic processor: the same maths, slower
    if getattr(device, "type", str(device)) == "cuda":
        module.to(memory_format=torch.channels_last)
    return module


def prepare(pipe: Any, config: AugmentConfig) -> Prepared:
    """The pipeline with learned concepts and LoRA weights applied to a private fork (the cached one untouched)."""
    return prepare_pipeline(pipe, concepts=config.concepts, lora=config.lora, lora_scale=config.lora_scale)
