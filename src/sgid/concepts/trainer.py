"""Textual inversion of one new token (Gal et al. 2022), following diffusers' textual inversion example.

The recipe, step by step:

1. add the token to the tokenizer, grow the text encoder's input embeddings by one row and copy the init
   token's row into it;
2. freeze everything: the VAE, the UNet and every text-encoder parameter; only the input-embedding matrix
   takes gradients, and only the new token's row of that gradient is used;
3. each step: encode the batch's images with the VAE (a sample of the latent distribution, times the VAE's
   scaling factor), add noise at a uniformly drawn timestep with a DDPM scheduler built from the pipeline's
   scheduler configuration, predict with the UNet conditioned on the template prompts, and take the MSE to the
   noise (``epsilon`` models) or to the velocity (``v_prediction`` models);
4. AdamW (the example's betas 0.9/0.999, weight decay 1e-2, epsilon 1e-8, constant learning rate).

The example runs AdamW over the whole embedding matrix and copies the old rows back after every step. Here
the optimiser holds only the new row (a (1, D) parameter written into the matrix after each step), which is
the same arithmetic for that row (AdamW is element-wise), keeps the optimiser state D-sized instead of
vocabulary-sized, and leaves every other row untouched by construction.

The trainer takes the models, never paths. It mutates the tokenizer and text encoder it is given (a token is
added) and switches ``requires_grad`` off on all three models: hand it private copies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sgid.concepts.data import ConceptImages
from sgid.errors import SgidError
from sgid.seeding import derive_seed, generator

ADAMW_BETAS = (0.9, 0.999)
ADAMW_WEIGHT_DECAY = 1e-2
ADAMW_EPSILON = 1e-8


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of ``sgid learn-concepts``; the defaults are DA-Fusion's runs of the diffusers example.

    DA-Fusion (Trabucco et al.) trained one token per class with batch size 4, 1000 steps and learning rate
    5e-4 scaled by the batch size (``--scale_lr``), i.e. 2e-3, constant, at the model's resolution. The
    diffusers README's single-concept recipe (batch 1 x 4 accumulation, 3000 steps, 5e-4 x 4 = 2e-3) uses the
    same effective learning rate for more steps; one concept per class of a dataset makes 1000 the sensible
    default. ``learning_rate`` is the rate actually used (no hidden scaling).
    """

    steps: int = 1000
    learning_rate: float = 2e-3
    batch_size: int = 4
    resolution: int | None = None  # None: the model's native resolution (512 for SD 1.x, 32 for the tiny model)
    seed: int = 0
    init_token: str | None = None  # None: the rule in sgid.concepts.tokens
    checkpoint_every: int = 100  # does not change results, so it is not part of the run's identity

    def validate(self) -> None:
        if self.steps < 1:
            raise SgidError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise SgidError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise SgidError(f"--learning-rate must be a positive number, got {self.learning_rate}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise SgidError(f"--resolution must be a positive multiple of 8, got {self.resolution}")
        if self.checkpoint_every < 1:
            raise SgidError(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")
        if self.init_token is not None and not self.init_token.strip():
            raise SgidError("--init-token must be a word, got an empty string")

    def identity(self) -> dict[str, Any]:
        """The settings that change the learned embeddings (a rerun with other values is refused)."""
        values = asdict(self)
        del values["checkpoint_every"]
        return values


@dataclass
class DiffusionParts:
    """The Stable Diffusion components textual inversion needs (``noise_scheduler`` is a training scheduler)."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any

    @classmethod
    def from_pipeline(cls, pipe: Any) -> DiffusionParts:
        """The pipeline's modules, with a DDPM scheduler made from its scheduler's configuration (same betas and
        prediction type) for adding training noise, as the diffusers example does."""
        from diffusers import DDPMScheduler

        return cls(
            tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder,
            vae=pipe.vae,
            unet=pipe.unet,
            noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        )

    @property
    def native_resolution(self) -> int:
        """The image size the UNet was built for: latent size times the VAE's downsampling factor."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * factor

    @property
    def embedding_width(self) -> int:
        return int(self.text_encoder.get_input_embeddings().weight.shape[-1])


@dataclass(frozen=True)
class TrainState:
    """Everything needed to continue training exactly: the step count, the row and the AdamW state.

    No random-number state is needed: every random choice of a step derives from (seed, class, step).
    """

    step: int
    embedding: torch.Tensor  # (1, D) float32, CPU
    optimizer: dict[str, torch.Tensor]  # AdamW's per-parameter state (step, exp_avg, exp_avg_sq), CPU
    loss: float | None = None  # of the last step taken


class ConceptTrainer:
    """Learns the embedding of one new token from one class's images."""

    def __init__(
        self,
        parts: DiffusionParts,
        data: ConceptImages,
        *,
        token: str,
        init_token: str,
        settings: TrainSettings,
        key: str,
    ) -> None:
        self.parts = parts
        self.data = data
        self.token = token
        self.settings = settings
        self.key = key  # identifies the concept in derived seeds (the class folder name)
        self.step_done = 0
        self.last_loss: float | None = None
        self.token_id = self._add_token(token, init_token)
        self._freeze()
        weights = self._embeddings.weight
        self.vector = torch.nn.Parameter(weights[self.token_id].detach().clone().float().unsqueeze(0))
        self.optimizer = torch.optim.AdamW(
            [self.vector],
            lr=settings.learning_rate,
            betas=ADAMW_BETAS,
            weight_decay=ADAMW_WEIGHT_DECAY,
            eps=ADAMW_EPSILON,
        )

    # -- set-up ------------------------------------------------------------------------------------------
    @property
    def _embeddings(self) -> torch.nn.Embedding:
        return self.parts.text_encoder.get_input_embeddings()

    def _add_token(self, token: str, init_token: str) -> int:
        tokenizer, text_encoder = self.parts.tokenizer, self.parts.text_encoder
        init_ids = tokenizer.encode(init_token, add_special_tokens=False)
        if len(init_ids) != 1:
            raise SgidError(f"the init token {init_token!r} must be a single token for this tokenizer")
        if tokenizer.add_tokens(token) != 1:
            raise SgidError(f"the tokenizer already has the token {token}; give the trainer a fresh tokenizer")
        token_id = int(tokenizer.convert_tokens_to_ids(token))
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            weights = text_encoder.get_input_embeddings().weight
            weights[token_id] = weights[init_ids[0]]
        return token_id

    def _freeze(self) -> None:
        for model in (self.parts.vae, self.parts.unet, self.parts.text_encoder):
            model.requires_grad_(False)
            model.eval()  # no dropout: a step depends on nothing but its seeds
        self._embeddings.weight.requires_grad_(True)

    # -- training ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._embeddings.weight.device

    def step(self) -> float:
        """One optimisation step; returns its loss."""
        loss = self._loss(self.step_done)
        loss.backward()
        weights = self._embeddings.weight
        assert weights.grad is not None
        self.vector.grad = weights.grad[self.token_id].detach().float().unsqueeze(0)
        weights.grad = None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            weights[self.token_id] = self.vector[0].to(weights.dtype)
        self.step_done += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    def _loss(self, step: int) -> torch.Tensor:
        p = self.parts
        batch = self.data.batch(step, self.settings.batch_size)
        rng = generator(derive_seed(self.settings.seed, self.key, step, "noise"))
        with torch.no_grad():
            pixels = batch.pixel_values.to(self.device, p.vae.dtype)
            latents = p.vae.encode(pixels).latent_dist.sample(generator=rng) * p.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=rng, dtype=torch.float32).to(latents.device, latents.dtype)
        size = (latents.shape[0],)
        timesteps = torch.randint(p.noise_scheduler.config.num_train_timesteps, size, generator=rng).to(self.device)
        noisy = p.noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = p.text_encoder(batch.input_ids.to(self.device))[0]
        prediction = p.unet(noisy, timesteps, hidden.to(p.unet.dtype)).sample
        return F.mse_loss(prediction.float(), self._target(latents, noise, timesteps).float())

    def _target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        kind = self.parts.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.parts.noise_scheduler.get_velocity(latents, noise, timesteps)
        raise SgidError(f"textual inversion supports epsilon and v_prediction models, not {kind!r}")

    # -- state -------------------------------------------------------------------------------------------
    def embedding(self) -> torch.Tensor:
        """The learned row, (1, D) float32 on the CPU (diffusers' learned-embeds layout)."""
        return self.vector.detach().cpu().clone()

    def state(self) -> TrainState:
        saved = self.optimizer.state_dict()["state"].get(0, {})
        tensors = {name: value.detach().cpu().clone() for name, value in saved.items() if torch.is_tensor(value)}
        return TrainState(self.step_done, self.embedding(), tensors, self.last_loss)

    def load_state(self, state: TrainState) -> None:
        """Continue from ``state`` (taken from a trainer with the same models, data and settings)."""
        with torch.no_grad():
            self.vector.copy_(state.embedding.to(self.vector.device, self.vector.dtype))
            weights = self._embeddings.weight
            weights[self.token_id] = self.vector[0].to(weights.dtype)
        if state.optimizer:
            optimizer_state = {
                name: value.to(self.vector.device) if name != "step" else value
                for name, value in state.optimizer.items()
            }
            groups = self.optimizer.state_dict()["param_groups"]
            self.optimizer.load_state_dict({"state": {0: optimizer_state}, "param_groups": groups})
        self.step_done = state.step
        self.last_loss = state.loss

    def finish(self) -> None:
        """Stop tracking gradients on the embedding matrix (the models stay frozen)."""
        self._embeddings.weight.requires_grad_(False)
        self._embeddings.weight.grad = None
