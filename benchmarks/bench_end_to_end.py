"""End to end: ``sgid augment`` against the per-image loop a researcher writes, same models, same images,
equal work.

    python benchmarks/bench_end_to_end.py                       # 16 square 256x256 images, 3 repeats
    python benchmarks/bench_end_to_end.py --mixed               # photos of mixed aspect ratio
    python benchmarks/bench_end_to_end.py --images 2 --steps 2 --repeats 1 --smoke   # checks that it runs

The models are random-weight BLIP, CLIP and Stable Diffusion of realistic proportions (``models.REALISTIC``: a
UNet of about 18M parameters at 256², BLIP/CLIP vision towers at 224), saved once and loaded by both sides with
``from_pretrained``. The loop, per image: BLIP 10 beam-search and 10 nucleus-sampled captions, CLIP scores of
all 20, the best caption's similarity s and g = -4s² + 2s + 1, the prompt "A picture of a <label>, <caption>"
encoded once with the label rows × 1.5 and the caption rows × 0.9, one ``StableDiffusionImg2ImgPipeline`` call
at the model's size, the result resized back and saved as PNG. Equal work: square images (the same generation
size both ways), the same number of guided steps (the loop passes ``max(g, 1.01)`` so that diffusers never
skips classifier-free guidance, which sgid always applies), captions computed (no cache). With ``--mixed`` the
images have mixed aspect ratios: sgid keeps the aspect ratio and so generates more pixels than the loop's square.

Each run is a fresh process (A, B, A, B, ...), timed from model loading to the last file written, with its peak
resident memory; the medians are printed. Prints sgid's time / the loop's and sgid's peak memory vs the loop's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

LABEL_WEIGHT, CAPTION_WEIGHT, NOISE = 1.5, 0.9, 0.5


def make_images(folder: Path, count: int, mixed: bool, size: int) -> None:
    rng = np.random.default_rng(0)
    shapes = [(size, size)] if not mixed else [(size * 4 // 3, size), (size, size * 3 // 2), (size * 16 // 9, size)]
    for i in range(count):
        width, height = shapes[i % len(shapes)]
        # smooth random images (a photo's spectrum, roughly), not white noise
        small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        target = folder / f"class{i % 4}" / f"{i:03}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)


def run_sgid(models: dict[str, str], source: Path, out: Path, steps: int) -> None:
    from common import sgid_options

    from sgid.pipeline import augment

    augment(source, out, **sgid_options(models, steps), noise=NOISE, batch_size=4)


def run_loop(models: dict[str, str], source: Path, out: Path, steps: int) -> None:
    """The straightforward per-image loop, written as the diffusers and transformers docs show."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPProcessor

    blip = BlipForConditionalGeneration.from_pretrained(models["blip"]).eval()
    blip_processor = BlipProcessor.from_pretrained(models["blip"])
    clip = CLIPModel.from_pretrained(models["clip"]).eval()
    clip_processor = CLIPProcessor.from_pretrained(models["clip"])
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        models["sd"], safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    for i, path in enumerate(sorted(source.rglob("*.png"))):
        image = Image.open(path).convert("RGB")
        label = path.parent.name
        with torch.no_grad():
            inputs = blip_processor(images=image, return_tensors="pt")
            beams = blip.generate(**inputs, num_beams=10, num_return_sequences=10, min_length=5, max_length=20)
            torch.manual_seed(i)
            sampled = blip.generate(
                **inputs, do_sample=True, top_p=0.9, top_k=0, num_return_sequences=10, min_length=5, max_length=20
            )
            captions = blip_processor.batch_decode(torch.cat([beams, sampled]), skip_special_tokens=True)
            scored = clip_processor(text=captions, images=image, return_tensors="pt", padding=True, truncation=True)
            image_emb = clip.get_image_features(pixel_values=scored.pixel_values).pooler_output
            text_emb = clip.get_text_features(input_ids=scored.input_ids, attention_mask=scored.attention_mask)
            text_emb = text_emb.pooler_output
            sims = torch.nn.functional.normalize(text_emb, dim=-1) @ torch.nn.functional.normalize(image_emb, dim=-1).T
            best = int(sims.argmax())
            s = float(sims[best])
            g = -4 * s * s + 2 * s + 1
            embeds, negative = weighted_embeds(pipe, f"A picture of a {label}", captions[best])
            result = pipe(
                image=image.resize((size, size), Image.Resampling.LANCZOS),
                prompt_embeds=embeds,
                negative_prompt_embeds=negative,
                strength=NOISE,
                num_inference_steps=steps,
                guidance_scale=max(g, 1.01),
                generator=torch.Generator().manual_seed(i),
            ).images[0]
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        result.resize(image.size, Image.Resampling.LANCZOS).save(target)


def weighted_embeds(pipe, label: str, caption: str):  # type: ignore[no-untyped-def]
    """Encode "label, caption" once; multiply the label's rows by w_l and the caption's by w_c."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder

    def encode(text: str):  # type: ignore[no-untyped-def]
        ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return encoder(ids)[0]

    n_label = len(tokenizer(label).input_ids) - 2  # without start and end tokens
    n_caption = len(tokenizer(caption).input_ids) - 2
    embeds = encode(f"{label}, {caption}").clone()
    embeds[:, 1 : 1 + n_label] *= LABEL_WEIGHT
    start = 1 + n_label + 1  # after the comma
    embeds[:, start : min(76, start + n_caption)] *= CAPTION_WEIGHT
    return embeds, encode("")


def child(args: argparse.Namespace) -> None:
    models = json.loads(args.child_models)
    started = time.perf_counter()
    (run_sgid if args.child == "sgid" else run_loop)(models, Path(args.source), Path(args.out), args.steps)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    print(json.dumps({"seconds": seconds, "peak_bytes": peak}))


def measure(which: str, models: dict[str, Path], source: Path, out: Path, steps: int) -> dict[str, float]:
    command = [
        __file__,
        "--child",
        which,
        "--child-models",
        json.dumps({k: str(v) for k, v in models.items()}),
        "--source",
        str(source),
        "--out",
        str(out),
        "--steps",
        str(steps),
    ]
    from common import in_child

    return in_child(*command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="the images' shorter side")
    parser.add_argument("--steps", type=int, default=20, help="scheduler steps; img2img runs int(steps * 0.5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mixed", action="store_true", help="photos of mixed aspect ratio")
    parser.add_argument("--smoke", action="store_true", help="tiny models: check that the script runs")
    parser.add_argument("--work", type=Path, default=None, help="folder for models and images [default: a temp dir]")
    parser.add_argument("--child", choices=("sgid", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--child-models", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from common import fresh
    from models import REALISTIC, SMOKE, realistic_models

    work = args.work or Path(tempfile.mkdtemp(prefix="sgid-bench-e2e-"))
    models = realistic_models(work / "models", SMOKE if args.smoke else REALISTIC)
    size = 64 if args.smoke else args.size
    source = work / ("input-mixed" if args.mixed else "input") / f"{args.images}-{size}"
    if not source.exists():
        make_images(source, args.images, args.mixed, size)
    results: dict[str, list[dict[str, float]]] = {"loop": [], "sgid": []}
    for repeat in range(args.repeats):
        for which in ("loop", "sgid"):
            out = fresh(work / "out" / f"{which}-{repeat}")
            results[which].append(measure(which, models, source, out, args.steps))
    loop, sgid = ({k: statistics.median(r[k] for r in results[w]) for k in ("seconds", "peak_bytes")} for w in results)
    shape = "mixed aspect ratios" if args.mixed else f"{size}x{size}"
    print(
        f"end to end, {args.images} images ({shape}), {int(args.steps * NOISE)} guided steps: "
        f"per-image loop {loop['seconds']:.1f} s (peak {loop['peak_bytes'] / 2**20:.0f} MiB), "
        f"sgid augment {sgid['seconds']:.1f} s (peak {sgid['peak_bytes'] / 2**20:.0f} MiB) "
        f"-> sgid/loop time {sgid['seconds'] / loop['seconds']:.2f}, "
        f"memory {100 * (sgid['peak_bytes'] / loop['peak_bytes'] - 1):+.0f}%"
    )


if __name__ == "__main__":
    main()
