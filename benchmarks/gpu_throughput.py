"""Images per second of sgid's generator on one GPU at the paper's setting, against the per-image diffusers loop.

    python benchmarks/gpu_throughput.py --out gpu_throughput.json    # a CUDA GPU; < 8 min on an H100-class GPU
    python benchmarks/gpu_throughput.py --smoke --out smoke.json     # tiny configs on the CPU (the test suite)

Stable Diffusion 1.5-shaped components from the published configs with random weights (the real model's FLOPs,
nothing downloaded; see ``models.py``), at the paper's setting: 512x512 images, 100 steps, noise 0.5 (50
denoising steps), one guidance scale per image. Measured:

* sgid's ``Img2ImgGenerator`` with its fast path (SDPA attention, channels-last UNet and VAE) at batch 1, 8,
  16 and 32, in fp16 and in bf16; then with ``torch.compile`` at each dtype's best batch size;
* the per-image loop: ``StableDiffusionImg2ImgPipeline`` called once per image (fp16, the pipeline's defaults).

Prints img/s for each, the best setting's ratio to the loop (target >= 2x) and its share of the FLOP limit:
the FLOPs of one guided UNet step (counted with torch's FlopCounter: 1.354 TFLOP at 512² for SD 1.5) times the
steps per second reached, against the device's measured bf16 matmul rate (target >= 40%). Writes everything to
``--out`` as JSON, with the device, the date and the versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from models import SD15, SMOKE, Shapes, sd15_components  # noqa: E402

NOISE, STEPS = 0.5, 100


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pipe(shapes: Shapes, dtype: torch.dtype, device: torch.device) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline

    parts = sd15_components(shapes, dtype=dtype, device=str(device))
    pipe = StableDiffusionImg2ImgPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    small = [rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8) for _ in range(count)]
    return [Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC) for a in small]


def sgid_rate(
    pipe: Any, batch: int, size: int, steps: int, repeats: int, device: torch.device, warm_up: bool = True
) -> float:
    """img/s of sgid's batched generator with per-sample guidance (after one warm-up batch)."""
    from sgid.stages.generate import Img2ImgGenerator
    from sgid.stages.prompt import PromptEncoder, build_prompt

    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    embeds = encoder.encode([build_prompt("dog", f"caption {i}") for i in range(batch)], [(1.5, 0.9)] * batch)
    negative = encoder.encode_texts([""] * batch)
    guidance = [1.1 + 0.01 * i for i in range(batch)]
    generator = Img2ImgGenerator(pipe)
    sources = images(batch, size)

    def once() -> None:
        generator(sources, embeds, negative, guidance, strength=NOISE, steps=steps, seeds=list(range(batch)))

    if warm_up:
        once()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        once()
    sync(device)
    return batch * repeats / (time.perf_counter() - started)


def loop_rate(pipe: Any, count: int, size: int, steps: int, device: torch.device, warm_up: bool = True) -> float:
    """img/s of one ``StableDiffusionImg2ImgPipeline`` call per image (after one warm-up call)."""
    sources = images(count + 1, size)

    def one(i: int) -> None:
        pipe(
            image=sources[i],
            prompt=f"A picture of a dog, caption {i}",
            strength=NOISE,
            num_inference_steps=steps,
            guidance_scale=1.1 + 0.01 * i,
            generator=torch.Generator().manual_seed(i),
        )

    if warm_up:
        one(count)
    sync(device)
    started = time.perf_counter()
    for i in range(count):
        one(i)
    sync(device)
    return count / (time.perf_counter() - started)


def flops_per_guided_step(pipe: Any, size: int, device: torch.device) -> float:
    """FLOPs of one UNet evaluation with classifier-free guidance (a batch of 2) at ``size``², counted."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    latent = size // pipe.vae_scale_factor
    sample = torch.randn(2, unet.config.in_channels, latent, latent, device=device, dtype=unet.dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(sample, 10, encoder_hidden_states=text)
    return float(counter.get_total_flops())


def matmul_rate(device: torch.device, smoke: bool) -> float:
    """The device's bf16 matmul rate in FLOP/s (an n x n x n product, repeated)."""
    n, repeats = (512, 3) if smoke else (8192, 50)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU: checks the code path")
    parser.add_argument("--out", type=Path, default=Path("gpu_throughput.json"))
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes [default: 1,8,16,32]")
    args = parser.parse_args()
    from sgid.models.loading import quiet_hub_logging
    from sgid.stages.bundle import speed_up

    quiet_hub_logging()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("gpu_throughput.py measures a CUDA GPU; use --smoke to check it on a CPU")
    shapes, size, steps = (SMOKE, 64, 4) if args.smoke else (SD15, 512, STEPS)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 2] if args.smoke else [1, 8, 16, 32])
    dtypes = {"fp32": torch.float32} if args.smoke else {"fp16": torch.float16, "bf16": torch.bfloat16}
    repeats = 1 if args.smoke else 2
    results: list[dict[str, Any]] = []

    def record(dtype: str, compiled: bool, batch: int, rate: float) -> None:
        results.append({"dtype": dtype, "compile": compiled, "batch": batch, "img_per_s": rate})
        print(f"sgid {dtype} batch {batch:>2}{' compiled' if compiled else ''}: {rate:.3f} img/s", flush=True)

    loop_dtype = "fp32" if args.smoke else "fp16"
    pipe = build_pipe(shapes, dtypes[loop_dtype], device)
    warm_up = not args.smoke  # the smoke run checks the code path, it times nothing worth a warm-up
    loop = loop_rate(pipe, 1 if args.smoke else 8, size, steps, device, warm_up)
    print(f"per-image diffusers loop {loop_dtype}: {loop:.3f} img/s", flush=True)
    flops = flops_per_guided_step(pipe, size, device)
    del pipe
    for name, dtype in dtypes.items():
        pipe = build_pipe(shapes, dtype, device)
        speed_up(pipe, device)
        for batch in batches:
            record(name, False, batch, sgid_rate(pipe, batch, size, steps, repeats, device, warm_up))
        if not args.smoke:  # compiling takes minutes on a CPU; the smoke run checks the rest
            best = max((r for r in results if r["dtype"] == name), key=lambda r: r["img_per_s"])["batch"]
            compiled = speed_up(pipe, device, compile=True)  # a fork of the pipeline with the UNet compiled
            record(name, True, best, sgid_rate(compiled, best, size, steps, repeats, device))
            del compiled
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    best = max(results, key=lambda r: r["img_per_s"])
    rate = matmul_rate(device, args.smoke)
    denoising = int(steps * NOISE)
    share = best["img_per_s"] * denoising * flops / rate
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "smoke": args.smoke,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "setting": {"size": size, "steps": steps, "noise": NOISE, "denoising_steps": denoising},
        "results": results,
        "loop_img_per_s": loop,
        "best": best,
        "ratio_to_loop": best["img_per_s"] / loop,
        "flops_per_guided_step": flops,
        "bf16_matmul_flops_per_s": rate,
        "flop_limit_share": share,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"best: {best['dtype']} batch {best['batch']}{' compiled' if best['compile'] else ''} "
        f"{best['img_per_s']:.3f} img/s -> {best['img_per_s'] / loop:.2f}x the per-image loop; "
        f"{flops / 1e12:.3f} TFLOP per guided step, bf16 matmul {rate / 1e12:.1f} TFLOP/s -> "
        f"{100 * share:.1f}% of the FLOP limit; written to {args.out}"
    )


if __name__ == "__main__":
    main()
