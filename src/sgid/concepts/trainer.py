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
from collections.abc import Sequence
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
    """The Stable Diffusion components training needs (``noise_scheduler`` is a training scheduler;
    ``scheduler``, the pipeline's own, renders prior and sample images)."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    scheduler: Any = None

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
            scheduler=pipe.scheduler,
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

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of a checkpoint file (the step and loss travel as its metadata)."""
        tensors = {"embedding": self.embedding.contiguous()}
        tensors.update({f"optimizer.{name}": value.contiguous() for name, value in self.optimizer.items()})
        return tensors

    @classmethod
    def from_tensors(cls, step: int, tensors: dict[str, torch.Tensor], loss: float | None) -> TrainState:
        optimizer = {name.split(".", 1)[1]: value for name, value in tensors.items() if name.startswith("optimizer.")}
        return cls(step, tensors["embedding"], optimizer, loss)


# -- pieces shared by every trainer --------------------------------------------------------------------------
def adamw(groups: list[dict[str, Any]]) -> torch.optim.AdamW:
    """AdamW with the diffusers examples' constants; each group gives its ``params`` and ``lr``."""
    return torch.optim.AdamW(groups, betas=ADAMW_BETAS, weight_decay=ADAMW_WEIGHT_DECAY, eps=ADAMW_EPSILON)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    """AdamW's per-parameter tensors (step, exp_avg, exp_avg_sq) by parameter index, copied to the CPU."""
    return {
        index: {name: value.detach().cpu().clone() for name, value in state.items() if torch.is_tensor(value)}
        for index, state in optimizer.state_dict()["state"].items()
    }


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[int, dict[str, torch.Tensor]]) -> None:
    """Restore what :func:`optimizer_state` took (from an optimizer over the same parameters)."""
    if not state:
        return
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    restored = {
        index: {name: value if name == "step" else value.to(parameters[index].device) for name, value in saved.items()}
        for index, saved in state.items()
    }
    optimizer.load_state_dict({"state": restored, "param_groups": optimizer.state_dict()["param_groups"]})


def freeze(*models: Any) -> None:
    """No gradients, no dropout: a step then depends on nothing but its seeds."""
    for model in models:
        model.requires_grad_(False)
        model.eval()


class TokenRows:
    """New tokens' rows of the text encoder's input embeddings, trained as one (K, D) fp32 parameter.

    The tokens are added to the tokenizer, the embedding matrix grows by K rows, and each new row starts as a
    copy of its init token's row. Gradients reach the whole matrix; :meth:`take_grad` keeps only the new rows'
    (as diffusers' textual inversion example does by restoring the others), and :meth:`write_back` puts the
    optimised rows into the matrix, so no other row can move.
    """

    def __init__(self, tokenizer: Any, text_encoder: Any, tokens: Sequence[str], init_tokens: Sequence[str]) -> None:
        self.text_encoder = text_encoder
        init_ids = []
        for init_token in init_tokens:
            ids = tokenizer.encode(init_token, add_special_tokens=False)
            if len(ids) != 1:
                raise SgidError(f"the init token {init_token!r} must be a single token for this tokenizer")
            init_ids.append(int(ids[0]))
        for token in tokens:
            if token in tokenizer.get_vocab():
                raise SgidError(f"the tokenizer already has the token {token}; give the trainer a fresh tokenizer")
        if tokenizer.add_tokens(list(tokens)) != len(tokens):
            raise SgidError("the new tokens must be distinct")
        self.ids = [int(tokenizer.convert_tokens_to_ids(token)) for token in tokens]
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            weights = self.embeddings.weight
            for token_id, init_id in zip(self.ids, init_ids, strict=True):
                weights[token_id] = weights[init_id]
        self.vector = torch.nn.Parameter(weights[self.ids].detach().clone().float())

    @property
    def embeddings(self) -> torch.nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    def track(self, enabled: bool = True) -> None:
        """Let gradients reach the embedding matrix (or stop them, and drop any left)."""
        self.embeddings.weight.requires_grad_(enabled)
        if not enabled:
            self.embeddings.weight.grad = None

    def take_grad(self) -> None:
        """Move the new rows' gradient to :attr:`vector` and drop the matrix's."""
        weights = self.embeddings.weight
        assert weights.grad is not None
        self.vector.grad = weights.grad[self.ids].detach().float()
        weights.grad = None

    def write_back(self) -> None:
        with torch.no_grad():
            weights = self.embeddings.weight
            weights[self.ids] = self.vector.to(weights.dtype)

    def load(self, values: torch.Tensor) -> None:
        with torch.no_grad():
            self.vector.copy_(values.to(self.vector.device, self.vector.dtype))
        self.write_back()

    def values(self) -> torch.Tensor:
        """The learned rows, (K, D) float32 on the CPU."""
        return self.vector.detach().cpu().clone()


def noise_prediction(
    parts: DiffusionParts, pixel_values: torch.Tensor, input_ids: torch.Tensor, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoising objective of Stable Diffusion training, as the diffusers examples compute it.

    VAE-encode the images (a sample of the latent distribution times the scaling factor), add noise at a
    uniformly drawn timestep per image, predict with the UNet conditioned on the prompts. Returns the fp32
    prediction and target (the noise for ``epsilon`` models, the velocity for ``v_prediction`` models). Every
    random draw comes from ``rng`` (on the CPU), so the result is a function of the seed.
    """
    vae, unet, scheduler = parts.vae, parts.unet, parts.noise_scheduler
    device = unet.device
    with torch.no_grad():
        pixels = pixel_values.to(vae.device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator=rng) * vae.config.scaling_factor
    latents = latents.to(device)
    noise = torch.randn(latents.shape, generator=rng, dtype=torch.float32).to(device, latents.dtype)
    timesteps = torch.randint(scheduler.config.num_train_timesteps, (latents.shape[0],), generator=rng).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    hidden = parts.text_encoder(input_ids.to(parts.text_encoder.device))[0]
    prediction = unet(noisy, timesteps, hidden.to(unet.dtype)).sample
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise SgidError(f"sgid learn-concepts supports epsilon and v_prediction models, not {kind!r}")
    return prediction.float(), target.float()


# -- textual inversion ---------------------------------------------------------------------------------------
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
        self.rows = TokenRows(parts.tokenizer, parts.text_encoder, [token], [init_token])
        self.token_id = self.rows.ids[0]
        freeze(parts.vae, parts.unet, parts.text_encoder)
        self.rows.track()
        self.vector = self.rows.vector
        self.optimizer = adamw([{"params": [self.vector], "lr": settings.learning_rate}])

    @property
    def description(self) -> str:
        return f"{self.key} {self.token}"

    def step(self) -> float:
        """One optimisation step; returns its loss."""
        batch = self.data.batch(self.step_done, self.settings.batch_size)
        rng = generator(derive_seed(self.settings.seed, self.key, self.step_done, "noise"))
        prediction, target = noise_prediction(self.parts, batch.pixel_values, batch.input_ids, rng)
        loss = F.mse_loss(prediction, target)
        loss.backward()
        self.rows.take_grad()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.rows.write_back()
        self.step_done += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    # -- state -------------------------------------------------------------------------------------------
    def embedding(self) -> torch.Tensor:
        """The learned row, (1, D) float32 on the CPU (diffusers' learned-embeds layout)."""
        return self.rows.values()

    def state(self) -> TrainState:
        return TrainState(self.step_done, self.embedding(), optimizer_state(self.optimizer).get(0, {}), self.last_loss)

    def load_state(self, state: TrainState) -> None:
        """Continue from ``state`` (taken from a trainer with the same models, data and settings)."""
        self.rows.load(state.embedding)
        load_optimizer_state(self.optimizer, {0: state.optimizer} if state.optimizer else {})
        self.step_done = state.step
        self.last_loss = state.loss

    def finish(self) -> None:
        """Stop tracking gradients on the embedding matrix (the models stay frozen)."""
        self.rows.track(False)
