"""The ``tiny`` model preset: random-weight BLIP, CLIP, Stable Diffusion (1.x, XL, InstructPix2Pix), ControlNets for
SD 1.x and SDXL, and a depth estimator, built from configs.

Built the way diffusers' and transformers' own tests build their dummy components, saved once (safetensors)
into the local cache, and from then on loaded through the same ``from_pretrained`` path as real checkpoints.
The cache folder is keyed by the components' definition (a hash of this module, the tokenizers' vocabularies
and the library versions that build them), so a changed definition is built afresh and never mixed up with an
old build, and an unchanged one is reused across sessions and projects sharing the cache.
Everything runs offline on a CPU in seconds. The weights are random: captions are word salad and images are
noise. The tiny preset exists to exercise the pipeline, never to judge it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from sgid.models.vocab import bert_vocab_file, clip_vocab_files

#: Part of the cache folder's name, with :func:`definition_hash` (which changes by itself with the definition).
TINY_VERSION = "3"
TINY_SEED = 0
WIDTH = 32  # hidden size of every tiny transformer
IMAGE_SIZE = 30  # BLIP/CLIP vision input (diffusers/transformers tests use 30 with patch 2)

COMPONENTS = ("blip", "clip", "sd", "pix2pix", "lm", "sdxl", "controlnet", "controlnet_sdxl", "depth")


@functools.cache
def definition_hash() -> str:
    """12 hex digits of sha256 over what defines the tiny components: this module's and the vocabularies'
    source, and the versions of the libraries that build and save them."""
    import diffusers
    import transformers

    from sgid.models import vocab

    digest = hashlib.sha256()
    for module_file in (__file__, vocab.__file__):
        digest.update(Path(module_file).read_bytes())
    for version in (torch.__version__, transformers.__version__, diffusers.__version__):
        digest.update(version.encode())
    return digest.hexdigest()[:12]


def tiny_root(cache_dir: Path) -> Path:
    return cache_dir / "tiny-models" / f"v{TINY_VERSION}-{definition_hash()}"


def ensure_tiny_models(cache_dir: Path) -> dict[str, Path]:
    """Build the tiny components into ``cache_dir`` unless present; return their local directories."""
    from sgid.models.loading import quiet_hub_logging

    quiet_hub_logging()
    root = tiny_root(cache_dir)
    paths = {name: root / name for name in COMPONENTS}
    builders = {
        "blip": build_blip,
        "clip": build_clip,
        "sd": build_sd,
        "pix2pix": build_pix2pix,
        "lm": build_lm,
        "sdxl": build_sdxl,
        "controlnet": build_controlnet,
        "controlnet_sdxl": build_controlnet_sdxl,
        "depth": build_depth,
    }
    for name, path in paths.items():
        if not (path / ".complete").exists():
            _build_atomically(path, builders[name])
    return paths


def _build_atomically(target: Path, build) -> None:
    """Build into a temporary sibling and rename, so concurrent builders never see half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            build(staging)
        (staging / ".complete").write_text("ok\n")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / ".complete").exists():  # someone else's half-built copy: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_files(folder / "_vocab")
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)
    shutil.rmtree(folder / "_vocab")
    return tokenizer


def _clip_text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _clip_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=2,
        hidden_size=WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=WIDTH,
    )


def _clip_image_processor(size: int = IMAGE_SIZE):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_blip(folder: Path) -> None:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    tokenizer = BertTokenizer(vocab=str(bert_vocab_file(folder / "_vocab")), bos_token="[DEC]")
    shutil.rmtree(folder / "_vocab")
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": WIDTH,
        "encoder_hidden_size": WIDTH,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    vision_config = {
        "hidden_size": WIDTH,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": 2,
        "projection_dim": WIDTH,
    }
    config = BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=WIDTH)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def build_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = _clip_tokenizer(folder)
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config=_clip_vision_config().to_dict(),
        projection_dim=WIDTH,
    )
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=_clip_image_processor(), tokenizer=tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


#: the tiny SD 1.x UNet's architecture (the ControlNet copies its encoder half); as small as keeps every part of a
#: real UNet (cross-attention, two resolutions), since the test suite's time goes mostly into its forwards
UNET = {
    "block_out_channels": (16, 32),
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "in_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "cross_attention_dim": WIDTH,
}
#: the tiny SDXL UNet's: text_time conditioning on 6 time ids of width 8 + the pooled text embedding
SDXL_UNET = {
    **UNET,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 6 * 8 + WIDTH,
    "cross_attention_dim": 2 * WIDTH,  # both text encoders side by side
}


def _unet(in_channels: int, architecture: dict | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        **{**(architecture or UNET), "in_channels": in_channels},
        sample_size=16,  # with the VAE's factor 2: the tiny model's native resolution is 32x32 pixels
        out_channels=4,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=32,
    )


def _sd1_scheduler():
    """Stable Diffusion 1.5's own scheduler configuration (PNDM, scaled-linear betas)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def _text_encoder_and_tokenizer(folder: Path):
    from transformers import CLIPTextModel

    tokenizer = _clip_tokenizer(folder)
    return CLIPTextModel(_clip_text_config(tokenizer)).eval(), tokenizer


def build_sd(folder: Path) -> None:
    """A tiny Stable Diffusion img2img/text2img checkpoint, with a tiny (disabled-by-default) safety checker."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    text_encoder, tokenizer = _text_encoder_and_tokenizer(folder)
    safety_config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config=_clip_vision_config().to_dict(),
        projection_dim=WIDTH,
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_unet(in_channels=4),
        scheduler=_sd1_scheduler(),
        safety_checker=StableDiffusionSafetyChecker(safety_config).eval(),
        feature_extractor=_clip_image_processor(),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]


def build_pix2pix(folder: Path) -> None:
    """A tiny InstructPix2Pix checkpoint: the UNet takes 8 channels (noisy latents + image latents)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    text_encoder, tokenizer = _text_encoder_and_tokenizer(folder)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_unet(in_channels=8),
        scheduler=EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]


def _sdxl_unet():
    return _unet(4, SDXL_UNET)


def build_sdxl(folder: Path) -> None:
    """A tiny SDXL img2img checkpoint: two CLIP text encoders (the second with a projection), a text_time UNet."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    text_encoder, tokenizer = _text_encoder_and_tokenizer(folder)
    tokenizer_2 = _clip_tokenizer(folder)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(tokenizer_2)).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=_sdxl_unet(),
        scheduler=EulerDiscreteScheduler(  # SDXL base's scheduler configuration
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]


def _controlnet(folder: Path, architecture: dict) -> None:
    """A tiny ControlNet for a UNet of ``architecture``. A real one starts with zero convolutions (no effect
    until trained); here they are random, so a condition image visibly changes what is generated."""
    from diffusers import ControlNetModel

    # conditioning image -> latent size: (16, 32) downsamples by 2, the tiny VAE's factor
    controlnet: Any = ControlNetModel(**architecture, conditioning_embedding_out_channels=(16, 32))
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    for conv in [*zero_convs, controlnet.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(conv.weight, std=0.1)
        torch.nn.init.zeros_(conv.bias)
    controlnet.eval().save_pretrained(folder, safe_serialization=True)


def build_controlnet(folder: Path) -> None:
    """A tiny ControlNet for the tiny Stable Diffusion 1.x (any ``--control`` kind: its weights are random)."""
    _controlnet(folder, UNET)


def build_controlnet_sdxl(folder: Path) -> None:
    """A tiny ControlNet for the tiny SDXL (text_time conditioning, 64-wide cross-attention)."""
    _controlnet(folder, SDXL_UNET)


def build_depth(folder: Path) -> None:
    """A tiny DPT depth estimator (``--control depth --control-model tiny:depth``)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=WIDTH,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 32, 32, 32],
        reassemble_factors=[4, 2, 1, 0.5],
        fusion_hidden_size=32,
        head_in_index=-1,
    )
    DPTForDepthEstimation(config).eval().save_pretrained(folder, safe_serialization=True)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)


def build_lm(folder: Path) -> None:
    """A tiny GPT-2 for the text-generation steps (Text2Img sentences, caption summaries, edit instructions)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from sgid.models.vocab import gpt2_vocab_files

    vocab, merges = gpt2_vocab_files(folder / "_vocab")
    tokenizer = GPT2Tokenizer(vocab=str(vocab), merges=str(merges), model_max_length=128)
    shutil.rmtree(folder / "_vocab")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=WIDTH,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
