"""Peak memory of ``sgid learn-concepts --method lora`` training steps, random weights in real shapes.

    python benchmarks/bench_lora_memory.py --shape sd15 --device cuda            # SD 1.5 at 512 px: the <= 16 GB claim
    python benchmarks/bench_lora_memory.py --shape tiny --device cpu --steps 3   # the tiny test model, any machine

Random weights in the real model shapes have the real activations, so the memory is the real memory; no weights
are downloaded. Each configuration runs in a fresh subprocess (a process's peak resident memory never goes down)
and prints one line: on CUDA the peak of ``torch.cuda.max_memory_allocated`` (and reserved) during training, the
UNet/VAE in fp16 and what is learned in fp32 (sgid's defaults there); on the CPU the process's peak resident
memory (``ru_maxrss``) and what it was before the first step, everything fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIGS = {  # name -> LoraSettings overrides
    "default (gradient checkpointing)": {},
    "prior preservation (batch 1 + 1 class image)": {"prior": True},
    "text-encoder LoRA too": {"text_encoder": True},
    "no gradient checkpointing": {"gradient_checkpointing": False},
}


def sd15_parts(tokenizer: Any) -> Any:
    """SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder shapes (the published configs), random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sgid.concepts import DiffusionParts

    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    noise = DDPMScheduler.from_config(scheduler.config)
    return DiffusionParts(tokenizer, text_encoder, vae, unet, noise, scheduler)


def measure(shape: str, device_name: str, resolution: int | None, steps: int, overrides: dict[str, Any]) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from sgid.concepts import DiffusionParts, LoraSettings, LoraTrainer
    from sgid.concepts.data import ConceptImages, JointImages
    from sgid.models.loading import default_cache_dir, load_sd_pipeline, resolve_models

    device = torch.device(device_name)
    half = torch.float16 if device.type == "cuda" else torch.float32
    ref = resolve_models("tiny", cache_dir=default_cache_dir()).generator
    tiny = load_sd_pipeline(ref, "img2img", device, half, False, private=True)  # training changes it
    parts = DiffusionParts.from_pipeline(tiny) if shape == "tiny" else sd15_parts(tiny.tokenizer)
    parts.unet.to(device, half)
    parts.vae.to(device, half)
    parts.text_encoder.to(device, torch.float32)
    size = resolution or parts.native_resolution
    prior = overrides.pop("prior", False)
    settings = LoraSettings(**overrides)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(4)]
    classes = ["cat", "cat", "dog", "dog"]
    instances = ConceptImages(images, size, parts.tokenizer, [f"<sgid-{c}> {c}" for c in classes], seed=0, key="i")
    priors = ConceptImages(images, size, parts.tokenizer, classes, seed=0, key="p") if prior else None
    data = JointImages(instances, classes, priors, classes if prior else ())
    tokens = ["<sgid-cat>", "<sgid-dog>"]
    trainer = LoraTrainer(parts, data, tokens=tokens, init_tokens=["the"] * 2, settings=settings, total_steps=steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    for _ in range(steps):
        trainer.step()
    result = {
        "trainable_parameters": sum(p.numel() for _, p in trainer.named),
        "unet_parameters": sum(p.numel() for p in parts.unet.parameters()),
        "resolution": size,
    }
    if device.type == "cuda":
        torch.cuda.synchronize()
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        result["device"] = torch.cuda.get_device_name()
    else:
        result["rss_before_training_gib"] = before
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        result["device"] = "cpu"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=None, help="[default: the model's, 512 for sd15]")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", help="run one configuration (by its name); used for the subprocesses")
    args = parser.parse_args()
    if args.only is not None:
        print(json.dumps(measure(args.shape, args.device, args.resolution, args.steps, dict(CONFIGS[args.only]))))
        return
    print(f"LoRA training, {args.shape} shapes, {args.device}, {args.steps} steps, batch 1 (rank 4, 2 class tokens)")
    for name in CONFIGS:
        command = [sys.executable, __file__, "--shape", args.shape, "--device", args.device, "--steps", str(args.steps)]
        if args.resolution:
            command += ["--resolution", str(args.resolution)]
        done = subprocess.run([*command, "--only", name], capture_output=True, text=True, env=dict(os.environ))
        if done.returncode:
            print(f"  {name}: failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if "peak_allocated_gib" in r:
            memory = f"peak {r['peak_allocated_gib']:.2f} GiB allocated, {r['peak_reserved_gib']:.2f} GiB reserved"
        else:
            memory = f"peak RSS {r['peak_rss_gib']:.2f} GiB (before the first step {r['rss_before_training_gib']:.2f})"
        print(f"  {name} at {r['resolution']} px: {memory}; {r['trainable_parameters']:,} trainable parameters")


if __name__ == "__main__":
    main()
