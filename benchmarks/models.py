"""Random-weight models of real proportions for the benchmarks, built from configs (nothing is downloaded).

Random weights in a real model's shapes do the real model's arithmetic, which is what a speed benchmark needs:

* ``sd15_components()``: Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L/14 text encoder from their published
  configs (``stable-diffusion-v1-5/stable-diffusion-v1-5``: unet/, vae/, text_encoder/ config.json), with the
  same FLOPs as the real model (1.354 TFLOP per guided UNet step at 512², torch's FlopCounter);
* ``realistic_models(root)``: BLIP, CLIP and Stable Diffusion of realistic proportions small enough for a CPU
  (a UNet of about 18M parameters at 256², BLIP/CLIP vision towers at 224), saved as checkpoints that both
  ``sgid augment`` and a hand-written diffusers loop load with ``from_pretrained``.

Tokenizers use sgid's small offline vocabularies: token ids are what the text encoder sees, so their number
of entries changes nothing about the arithmetic.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sgid.models.tiny import (
    _build_atomically,
    _clip_tokenizer,
    _sd1_scheduler,
)
from sgid.models.vocab import bert_vocab_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Shapes:
    """The sizes that set a model family's arithmetic."""

    unet_channels: tuple[int, ...]
    unet_attention_head_dim: int
    latent_size: int  # UNet sample size; the image size is 8x this (VAE factor 8)
    vae_channels: tuple[int, ...]
    text_width: int
    text_layers: int
    text_heads: int
    vision_width: int = 384
    vision_layers: int = 6
    vision_heads: int = 6
    vision_image: int = 224


#: Stable Diffusion 1.5 (published configs); 512x512 images.
SD15 = Shapes((320, 640, 1280, 1280), 8, 64, (128, 256, 512, 512), 768, 12, 12)
#: Realistic proportions for a CPU: 256x256 images, a UNet of about 18M parameters.
REALISTIC = Shapes((64, 128, 256, 256), 8, 32, (64, 128, 256, 256), 256, 4, 4)
#: For --smoke runs: the same code path on a CPU in seconds.
SMOKE = Shapes((32, 64), 8, 8, (32, 64), 32, 2, 4, vision_width=32, vision_layers=2, vision_heads=4, vision_image=32)


def unet(shapes: Shapes) -> Any:
    from diffusers import UNet2DConditionModel

    levels = len(shapes.unet_channels)
    return UNet2DConditionModel(
        sample_size=shapes.latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=shapes.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=shapes.text_width,
        attention_head_dim=shapes.unet_attention_head_dim,
        norm_num_groups=min(32, shapes.unet_channels[0]),
    )


def vae(shapes: Shapes) -> Any:
    from diffusers import AutoencoderKL

    levels = len(shapes.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=shapes.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=min(32, shapes.vae_channels[0]),
        sample_size=shapes.latent_size * 2 ** (levels - 1),
    )


def text_config(shapes: Shapes, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=max(len(tokenizer), 49408 if shapes is SD15 else 0),
        hidden_size=shapes.text_width,
        intermediate_size=4 * shapes.text_width,
        num_hidden_layers=shapes.text_layers,
        num_attention_heads=shapes.text_heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=shapes.text_width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def sd15_components(shapes: Shapes = SD15, dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict[str, Any]:
    """UNet, VAE, text encoder, tokenizer and scheduler of Stable Diffusion 1.5's shapes, random weights."""
    import tempfile

    from transformers import CLIPTextModel

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = _clip_tokenizer(Path(scratch))
    torch.manual_seed(0)
    parts = {
        "unet": unet(shapes),
        "vae": vae(shapes),
        "text_encoder": CLIPTextModel(text_config(shapes, tokenizer)),
    }
    for module in parts.values():
        module.to(device=device, dtype=dtype).eval()
    return {**parts, "tokenizer": tokenizer, "scheduler": _sd1_scheduler()}


def _build_sd(shapes: Shapes, folder: Path) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    parts = sd15_components(shapes)
    pipe = StableDiffusionImg2ImgPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _build_clip(shapes: Shapes, folder: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    tokenizer = _clip_tokenizer(folder)
    vision = CLIPVisionConfig(
        image_size=shapes.vision_image,
        patch_size=32 if shapes.vision_image >= 224 else 4,
        hidden_size=shapes.vision_width,
        intermediate_size=4 * shapes.vision_width,
        num_hidden_layers=shapes.vision_layers,
        num_attention_heads=shapes.vision_heads,
        projection_dim=shapes.text_width,
    )
    config = CLIPConfig(
        text_config=text_config(shapes, tokenizer).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=shapes.text_width,
    )
    size = shapes.vision_image
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer,
    )
    CLIPModel(config).eval().save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def _build_blip(shapes: Shapes, folder: Path) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = BertTokenizer(vocab=str(bert_vocab_file(folder / "_vocab")), bos_token="[DEC]")
    shutil.rmtree(folder / "_vocab")
    width = shapes.vision_width
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "encoder_hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": max(2, shapes.vision_layers // 2),
        "num_attention_heads": shapes.vision_heads,
        "max_position_embeddings": 64,
        "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    vision = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": shapes.vision_layers,
        "num_attention_heads": shapes.vision_heads,
        "image_size": shapes.vision_image,
        "patch_size": 16 if shapes.vision_image >= 224 else 4,
        "projection_dim": width,
    }
    size = shapes.vision_image
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=width))
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": size, "width": size}), tokenizer=tokenizer
    )
    model.eval().save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def realistic_models(root: Path, shapes: Shapes = REALISTIC) -> dict[str, Path]:
    """BLIP, CLIP and Stable Diffusion checkpoints of ``shapes`` under ``root`` (built once, then reused)."""
    from sgid.models.loading import quiet_hub_logging

    quiet_hub_logging()
    name = "realistic" if shapes is REALISTIC else "smoke" if shapes is SMOKE else "custom"
    paths = {part: Path(root) / f"{name}-v1" / part for part in ("blip", "clip", "sd")}
    builders = {"blip": _build_blip, "clip": _build_clip, "sd": _build_sd}
    for part, path in paths.items():
        if not (path / ".complete").exists():
            _build_atomically(path, lambda folder, build=builders[part]: build(shapes, folder))
    return paths


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
