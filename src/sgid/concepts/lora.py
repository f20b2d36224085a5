"""DreamBooth-LoRA fine-tuning of Stable Diffusion on every class at once, with one new token per class.

The recipe is diffusers' ``examples/dreambooth/train_dreambooth_lora.py`` (its README's run: batch 1, constant
learning rate 1e-4, no warm-up), trained on all classes of a dataset together with one learned token per class in
the prompt, as Diff-Mix (Wang et al., CVPR 2024) does before generating:

1. tokens: ``<sgid-CLASS>`` for every class, each row starting from its init token (:class:`TokenRows`);
2. freeze the VAE, the UNet and the text encoder; add LoRA adapters (peft, Gaussian init: A ~ N(0, 1/r), B = 0)
   to the UNet's attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (and, with ``text_encoder``,
   to the text encoder's ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``); the adapters train in fp32;
3. each step: B instance images from all classes, prompt ``"a photo of a <sgid-cat> cat"``-style templates
   (the token, then the label as DreamBooth's class noun), plus with prior preservation one stored class image
   of the same class per instance image (prompt ``"a photo of a cat"``); the denoising MSE of the instances,
   plus ``prior_loss_weight`` times that of the class images;
4. AdamW (0.9, 0.999, weight decay 1e-2, eps 1e-8), constant rates: ``learning_rate`` for the LoRA weights,
   ``token_learning_rate`` for the token rows; the LoRA weights' gradient norm clipped to ``max_grad_norm``.

Every random choice of step ``s`` derives from (seed, step), the adapters' initialisation from the seed: a run
resumed from a checkpoint (LoRA weights, token rows, AdamW state, loss history) is bit-identical to an
uninterrupted one on the CPU. The weights are saved in diffusers' LoRA format
(``pipe.load_lora_weights(DIR)`` loads them), the tokens as textual-inversion files.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sgid.concepts.data import JointImages
from sgid.concepts.store import LORA_WEIGHT_NAME, canonical_safetensors
from sgid.concepts.trainer import (
    DiffusionParts,
    TokenRows,
    adamw,
    freeze,
    load_optimizer_state,
    noise_prediction,
    optimizer_state,
)
from sgid.errors import SgidError, require
from sgid.seeding import derive_seed, generator

#: The attention projections of diffusers' DreamBooth-LoRA example (its ``add_k_proj``/``add_v_proj`` exist
#: only in UNets with added key/value projections, such as DeepFloyd IF's, not in Stable Diffusion's).
UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # the example's --train_text_encoder
STEPS_PER_CLASS = 500  # the example README's 500 steps for one subject, per class of the dataset
ADAPTER = "default"
LOSS_COLUMNS = ("loss", "instance_loss", "prior_loss")


@dataclass(frozen=True)
class LoraSettings:
    """Hyperparameters of ``sgid learn-concepts --method lora``; defaults: diffusers' DreamBooth-LoRA example.

    ``rank`` is the example's ``--rank`` default (4) and ``alpha`` its ``lora_alpha=args.rank`` (None: equal to
    the rank, a LoRA scale of 1); ``learning_rate``, ``batch_size`` and the constant schedule are its README's run
    (1e-4, 1, no warm-up); ``prior_loss_weight`` (1.0), ``prior_steps`` (50) and ``prior_guidance`` (7.5) are its
    ``--prior_loss_weight`` and the pipeline defaults it generates class images with; ``max_grad_norm`` is its
    ``--max_grad_norm``. ``token_learning_rate`` is the diffusers textual-inversion README's 5e-4 (Diff-Mix also
    gives the tokens their own rate). ``steps`` counts optimisation steps of the whole joint run (None: 500 per
    class, the example's budget for one subject).
    """

    steps: int | None = None
    learning_rate: float = 1e-4
    token_learning_rate: float = 5e-4
    batch_size: int = 1
    rank: int = 4
    alpha: float | None = None
    tokens: bool = True  # learn one token per class (False: LoRA only, prompts name the label)
    text_encoder: bool = False  # also LoRA on the text encoder
    prior_images: int = 0  # class images per class for prior preservation (0: off)
    prior_loss_weight: float = 1.0
    prior_steps: int = 50
    prior_guidance: float = 7.5
    max_grad_norm: float = 1.0
    resolution: int | None = None  # None: the model's native resolution
    seed: int = 0
    init_token: str | None = None
    # execution only: these do not change the learned weights, so they are not part of the run's identity
    gradient_checkpointing: bool = True
    checkpoint_every: int = 100
    samples_per_class: int = 2  # sample images per class at every checkpoint (0: none)
    sample_steps: int = 25  # denoising steps of those samples (the example's validation runs use 25)

    EXECUTION_ONLY = ("gradient_checkpointing", "checkpoint_every", "samples_per_class", "sample_steps")

    def validate(self) -> None:
        def positive(value: float) -> bool:
            return math.isfinite(value) and value > 0

        rules: list[tuple[bool, str]] = [
            (self.steps is None or self.steps >= 1, f"--steps must be at least 1, got {self.steps}"),
            (positive(self.learning_rate), f"--learning-rate must be a positive number, got {self.learning_rate}"),
            (
                positive(self.token_learning_rate),
                f"--token-learning-rate must be a positive number, got {self.token_learning_rate}",
            ),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.rank >= 1, f"--rank must be at least 1, got {self.rank}"),
            (self.alpha is None or positive(self.alpha), f"--alpha must be a positive number, got {self.alpha}"),
            (self.prior_images >= 0, f"--prior-images must be 0 or more, got {self.prior_images}"),
            (
                math.isfinite(self.prior_loss_weight) and self.prior_loss_weight >= 0,
                f"--prior-loss-weight must be 0 or more, got {self.prior_loss_weight}",
            ),
            (self.prior_steps >= 1, f"--prior-steps must be at least 1, got {self.prior_steps}"),
            (math.isfinite(self.prior_guidance), f"prior_guidance must be a number, got {self.prior_guidance}"),
            (positive(self.max_grad_norm), f"max_grad_norm must be a positive number, got {self.max_grad_norm}"),
            (
                self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0),
                f"--resolution must be a positive multiple of 8, got {self.resolution}",
            ),
            (self.checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {self.checkpoint_every}"),
            (self.samples_per_class >= 0, f"--samples-per-class must be 0 or more, got {self.samples_per_class}"),
            (self.sample_steps >= 1, f"--sample-steps must be at least 1, got {self.sample_steps}"),
            (self.init_token is None or bool(self.init_token.strip()), "--init-token must be a word, got ''"),
            (self.tokens or self.init_token is None, "--init-token needs tokens (it is not used with --no-tokens)"),
        ]
        for ok, message in rules:
            if not ok:
                raise SgidError(message)

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def total_steps(self, classes: int) -> int:
        return self.steps if self.steps is not None else STEPS_PER_CLASS * classes

    def identity(self, classes: Sequence[str]) -> dict[str, Any]:
        """The settings that change the learned weights, resolved (steps, alpha) and with the classes trained."""
        values = asdict(self)
        for name in self.EXECUTION_ONLY:
            del values[name]
        values.update(method="lora", steps=self.total_steps(len(classes)), alpha=self.lora_alpha)
        values["classes"] = sorted(classes)
        return values


@dataclass(frozen=True)
class LoraState:
    """Everything a joint run needs to continue exactly (CPU tensors)."""

    step: int
    lora: dict[str, torch.Tensor]  # trainable LoRA parameters, "unet.<name>" / "text_encoder.<name>"
    tokens: torch.Tensor | None  # (K, D) token rows, None without tokens
    optimizer: dict[int, dict[str, torch.Tensor]]  # AdamW state per parameter index
    losses: torch.Tensor  # (step, 3) float64: loss, instance loss, prior loss (NaN without priors)
    loss: float | None = None

    def to_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"lora.{name}": value.contiguous() for name, value in self.lora.items()}
        if self.tokens is not None:
            tensors["tokens"] = self.tokens.contiguous()
        tensors["losses"] = self.losses.contiguous()
        for index, state in self.optimizer.items():
            tensors.update({f"optimizer.{index}.{name}": value.contiguous() for name, value in state.items()})
        return tensors

    @classmethod
    def from_tensors(cls, step: int, tensors: dict[str, torch.Tensor], loss: float | None) -> LoraState:
        lora = {name[len("lora.") :]: value for name, value in tensors.items() if name.startswith("lora.")}
        if not lora:
            raise KeyError("lora")
        optimizer: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            match = re.fullmatch(r"optimizer\.(\d+)\.(\w+)", name)
            if match:
                optimizer.setdefault(int(match[1]), {})[match[2]] = value
        return cls(step, lora, tensors.get("tokens"), optimizer, tensors["losses"], loss)


class LoraTrainer:
    """One LoRA (and one token per class) learned from every class's images at once, on models passed in.

    It adds adapters to ``parts.unet`` (and ``parts.text_encoder``) and tokens to ``parts.tokenizer``: hand it a
    private pipeline's parts. ``tokens``/``init_tokens`` are empty when no tokens are learned.
    """

    def __init__(
        self,
        parts: DiffusionParts,
        data: JointImages,
        *,
        tokens: Sequence[str],
        init_tokens: Sequence[str],
        settings: LoraSettings,
        total_steps: int,
        key: str = "lora",
    ) -> None:
        require("peft", "concepts")
        from peft import LoraConfig, inject_adapter_in_model

        self.parts = parts
        self.data = data
        self.settings = settings
        self.total_steps = total_steps
        self.key = key
        self.step_done = 0
        self.last_loss: float | None = None
        self.losses: list[tuple[float, float, float]] = []
        self.tokens = list(tokens)
        self.rows = TokenRows(parts.tokenizer, parts.text_encoder, tokens, init_tokens) if tokens else None
        freeze(parts.vae, parts.unet, parts.text_encoder)

        def config(targets: Sequence[str]) -> Any:
            return LoraConfig(
                r=settings.rank,
                lora_alpha=settings.lora_alpha,  # type: ignore[arg-type]  # annotated int; scaling = alpha / r
                init_lora_weights="gaussian",
                target_modules=list(targets),
            )

        with torch.random.fork_rng(devices=[]):  # peft initialises lora_A from torch's global generator
            torch.manual_seed(derive_seed(settings.seed, key, "init"))
            parts.unet.add_adapter(config(UNET_TARGETS), adapter_name=ADAPTER)
            if settings.text_encoder:
                # peft directly: transformers' add_adapter refuses peft releases older than it expects
                inject_adapter_in_model(config(TEXT_ENCODER_TARGETS), parts.text_encoder, adapter_name=ADAPTER)
        self.named = [(f"unet.{n}", p) for n, p in parts.unet.named_parameters() if p.requires_grad]
        if settings.text_encoder:
            self.named += [
                (f"text_encoder.{n}", p) for n, p in parts.text_encoder.named_parameters() if p.requires_grad
            ]
        for _, parameter in self.named:
            parameter.data = parameter.data.float()  # the adapters train in fp32 whatever the model's precision
        if settings.gradient_checkpointing:
            parts.unet.enable_gradient_checkpointing()
            if settings.text_encoder:
                encoder = parts.text_encoder
                enable = getattr(encoder, "activation_checkpointing_enable", None)  # transformers >= 5.24's name
                if enable is not None:
                    enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                encoder.train()  # transformers checkpoints only in training mode (CLIP has no dropout)
        groups: list[dict[str, Any]] = [{"params": [p for _, p in self.named], "lr": settings.learning_rate}]
        if self.rows is not None:
            self.rows.track()
            groups.append({"params": [self.rows.vector], "lr": settings.token_learning_rate})
        self.optimizer = adamw(groups)

    @property
    def description(self) -> str:
        return "lora"

    def step(self) -> float:
        """One optimisation step; returns its loss."""
        s = self.settings
        batch = self.data.batch(self.step_done, s.batch_size)
        rng = generator(derive_seed(s.seed, self.key, self.step_done, "noise"))
        prediction, target = noise_prediction(self.parts, batch.pixel_values, batch.input_ids, rng)
        count = len(batch.indices)
        instance = F.mse_loss(prediction[:count], target[:count])
        prior = F.mse_loss(prediction[count:], target[count:]) if prediction.shape[0] > count else None
        loss = instance if prior is None else instance + s.prior_loss_weight * prior
        loss.backward()
        if self.rows is not None:
            self.rows.take_grad()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.named], s.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.rows is not None:
            self.rows.write_back()
        self.step_done += 1
        self.last_loss = float(loss.detach())
        self.losses.append(
            (self.last_loss, float(instance.detach()), math.nan if prior is None else float(prior.detach()))
        )
        return self.last_loss

    # -- state -------------------------------------------------------------------------------------------
    def state(self) -> LoraState:
        return LoraState(
            self.step_done,
            {name: p.detach().cpu().clone() for name, p in self.named},
            None if self.rows is None else self.rows.values(),
            optimizer_state(self.optimizer),
            torch.tensor(self.losses, dtype=torch.float64).reshape(-1, len(LOSS_COLUMNS)),
            self.last_loss,
        )

    def load_state(self, state: LoraState) -> None:
        """Continue from ``state`` (taken from a trainer with the same models, data and settings)."""
        if sorted(state.lora) != sorted(name for name, _ in self.named):
            raise SgidError("the checkpoint's LoRA layers do not match this model")
        with torch.no_grad():
            for name, parameter in self.named:
                parameter.copy_(state.lora[name].to(parameter.device, parameter.dtype))
        if self.rows is not None and state.tokens is not None:
            self.rows.load(state.tokens)
        load_optimizer_state(self.optimizer, state.optimizer)
        self.step_done = state.step
        self.last_loss = state.loss
        self.losses = [(row[0], row[1], row[2]) for row in state.losses.tolist()]

    def finish(self) -> None:
        for _, parameter in self.named:
            parameter.grad = None
        if self.rows is not None:
            self.rows.track(False)

    def embeddings(self) -> dict[str, torch.Tensor]:
        """token -> its learned row, (1, D) float32 (diffusers' learned-embeds layout)."""
        if self.rows is None:
            return {}
        values = self.rows.values()
        return {token: values[i : i + 1].clone() for i, token in enumerate(self.tokens)}

    def lora_file_bytes(self) -> bytes:
        """The adapters as diffusers' ``pytorch_lora_weights.safetensors`` (``save_lora_weights``, with each
        adapter's configuration as metadata so its alpha travels with it)."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet, text_encoder = self.parts.unet, self.parts.text_encoder
        layers: dict[str, Any] = {
            "unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
            "unet_lora_adapter_metadata": unet.peft_config[ADAPTER].to_dict(),
        }
        if self.settings.text_encoder:
            layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(text_encoder, adapter_name=ADAPTER)
            )
            layers["text_encoder_lora_adapter_metadata"] = text_encoder.peft_config[ADAPTER].to_dict()
        with tempfile.TemporaryDirectory() as folder:
            StableDiffusionPipeline.save_lora_weights(folder, **layers)
            return canonical_safetensors((Path(folder) / LORA_WEIGHT_NAME).read_bytes())

    def description_of_lora(self) -> dict[str, Any]:
        """What the concepts index records about the adapters."""
        s = self.settings
        return {
            "file": LORA_WEIGHT_NAME,
            "rank": s.rank,
            "alpha": s.lora_alpha,
            "unet_target_modules": list(UNET_TARGETS),
            "text_encoder": s.text_encoder,
            "text_encoder_target_modules": list(TEXT_ENCODER_TARGETS) if s.text_encoder else [],
            "trainable_parameters": sum(p.numel() for _, p in self.named),
        }
