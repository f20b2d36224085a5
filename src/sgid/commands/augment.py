"""``sgid augment INPUT --out OUT``: grow a labelled image folder with SGID (or another method)."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "augment a labelled image folder (one subfolder per class)"


METHOD_NAMES = (  # a test pins it to the registry
    "sgid, text2img, diverse_caption, instruct_pix2pix, boomerang, retrieval, randaugment, random_erasing, cutmix"
)
CLIP_ONLY = ("models", "scorer", "device", "dtype", "cache_dir")  # the model flags of commands that use only CLIP


MODEL_HELP = {
    "--captioner": "BLIP captioning model: hub id or local folder [default: the preset's]",
    "--sd-model": "Stable Diffusion 1.x/2.x: hub id, diffusers folder or single .safetensors file [default: the "
    "preset's]",
    "--sd-config": "for a single-file --sd-model: a diffusers folder or hub id with its model's configs",
}


def add_model_options(
    parser: argparse.ArgumentParser, *, models_default: str = "default", clip_only: bool = False
) -> None:
    """The model flags; ``clip_only`` for commands that use only CLIP (filter, metrics): their other model flags
    are accepted (scripts keep working) but hidden from the help, and warned about when given."""
    group = parser.add_argument_group("models")
    if clip_only:
        group.add_argument(
            "--models",
            default=None,
            help="model preset for CLIP: default (CLIP ViT-B/32) or tiny (random weights, offline, for testing) "
            "[default: the run's own CLIP]",
        )
        group.add_argument("--scorer", help="CLIP model: hub id or local folder [default: the run's own CLIP]")
    else:
        group.add_argument(
            "--models",
            default=None,
            help="model preset: default (the paper's: BLIP base, CLIP ViT-B/32, SD v1.5) or tiny (random-weight "
            f"stand-ins, offline, for testing) [default: {models_default}]",
        )
        group.add_argument(
            "--scorer", help="CLIP model for similarities: hub id or local folder [default: the preset's]"
        )
    for flag, text in MODEL_HELP.items():
        group.add_argument(flag, help=argparse.SUPPRESS if clip_only else text)
    group.add_argument("--device", default=None, help="auto (cuda if available), cpu, cuda, cuda:N [default: auto]")
    group.add_argument(
        "--dtype", default=None, help="auto (fp16 on cuda, fp32 otherwise), fp32, fp16, bf16 [default: auto]"
    )
    cached = "the image-feature cache" if clip_only else "the caption cache"
    group.add_argument("--cache-dir", help=f"where tiny models and {cached} live [default: ~/.cache/sgid]")


def add_run_reader_options(parser: argparse.ArgumentParser) -> None:
    """The runtime flags of the commands that read a run with CLIP only (filter, metrics): the model flags,
    ``--no-cache`` and ``--quiet`` (:class:`sgid.features.ClipOptions`)."""
    add_model_options(parser, clip_only=True)
    parser.add_argument(
        "--no-cache", dest="cache", action="store_false", help="do not read or write the image-feature cache"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summary")


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generator backend (docs/backends.md)")
    group.add_argument(
        "--backend",
        default=None,
        help="the --sd-model's model family: sd (1.x/2.x), sdxl; without --sd-model, the preset's model of that "
        "family [default: found from the checkpoint's configs]",
    )
    group.add_argument(
        "--control",
        default=None,
        help="ControlNet-guided img2img: the condition image computed from each source, canny (OpenCV edges) or "
        "depth (a depth-estimation model) [default: none]",
    )
    group.add_argument(
        "--controlnet",
        default=None,
        help="the ControlNet: hub id, diffusers folder or .safetensors file [default: the --control kind's "
        "ControlNet for the model family, e.g. lllyasviel/sd-controlnet-canny]",
    )
    group.add_argument(
        "--control-scale",
        type=float,
        default=None,
        help="ControlNet conditioning scale (its residuals' weight) [default: 0.8, diffusers' img2img default]",
    )
    group.add_argument("--canny-low", type=int, default=None, help="canny: lower hysteresis threshold [default: 100]")
    group.add_argument("--canny-high", type=int, default=None, help="canny: upper hysteresis threshold [default: 200]")
    group.add_argument(
        "--control-model",
        default=None,
        help="depth: the depth-estimation model, hub id or folder [default: Intel/dpt-hybrid-midas]",
    )


def warn_unused_model_flags(args: argparse.Namespace, command: str) -> None:
    """Model flags a CLIP-only command accepts but does not use: one warning line each."""
    from sgid.progress import warn

    for name in ("captioner", "sd_model", "sd_config"):
        if getattr(args, name, None) is not None:
            flag = "--" + name.replace("_", "-")
            warn(f"{flag} does not apply to sgid {command} (it uses only CLIP: --models, --scorer); it is ignored")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("augment", help=HELP, description=__doc__)
    p.add_argument("input", help="input folder: INPUT/<class>/<image>")
    p.add_argument("--out", "-o", required=True, help="output folder (imagefolder + metadata.jsonl)")
    p.add_argument(
        "--method",
        default=None,
        help=f"augmentation method: {METHOD_NAMES}; or a chain a+b (b applied to a's outputs, e.g. text2img+sgid) "
        "[default: sgid]",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="dataset preset from the paper's table 8: cifar10, cifar100, "
        "caltech101, stanford_cars, flowers102, oxford_pets, dtd (explicit flags override it)",
    )
    add_model_options(p)
    add_backend_options(p)
    p.add_argument(
        "--safety-checker",
        action="store_true",
        default=None,
        help="run SD's safety checker; flagged (blacked-out) outputs are never kept as training images",
    )
    p.add_argument(
        "--on-flagged",
        default=None,
        choices=["drop", "retry"],
        help="with --safety-checker, a flagged image is dropped (listed in errors.jsonl) or made again with the "
        "next derived seed, up to --flagged-tries tries in all, every flagged seed recorded [default: drop]",
    )
    p.add_argument(
        "--flagged-tries", type=int, default=None, help="--on-flagged retry: tries per image in all [default: 3]"
    )

    cap = p.add_argument_group("step 1: captions and similarity (paper §3.1)")
    cap.add_argument(
        "--caption",
        default=None,
        help="which caption goes into the prompt: clip (most similar of all), "
        "beam or nucleus (seeded random pick from that set) [default: clip]",
    )
    cap.add_argument(
        "--similarity",
        default=None,
        help="s*: cosine (CLIP ViT-B/32 gives about 0.15-0.40, where f(s*) stays near 1.2) or softmax over the "
        "candidates (anywhere in (0, 1]; f < 1 above 0.5, < 0 above 0.81) [default: cosine]",
    )
    cap.add_argument("--beam-captions", type=int, default=None, help="beam-search captions per image [default: 10]")
    cap.add_argument("--num-beams", type=int, default=None, help="beam width; must be >= --beam-captions [default: 10]")
    cap.add_argument(
        "--nucleus-captions", type=int, default=None, help="nucleus-sampled captions per image [default: 10]"
    )
    cap.add_argument("--top-p", type=float, default=None, help="nucleus sampling p [default: 0.9]")
    cap.add_argument("--top-k", type=int, default=None, help="top-k before nucleus; 0 disables [default: 0]")
    cap.add_argument("--min-length", type=int, default=None, help="caption min length, BLIP's convention [default: 5]")
    cap.add_argument("--max-length", type=int, default=None, help="caption max length [default: 20]")
    cap.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="for beam and nucleus captions; 1.0 = none, as the paper gives none (BLIP's own code uses 1.1 for its "
        "nucleus sampling and 1.0 for beam search) [default: 1.0]",
    )
    cap.add_argument("--caption-batch-size", type=int, default=None, help="images per BLIP/CLIP call [default: 8]")
    cap.add_argument(
        "--no-cache",
        action="store_true",
        default=None,
        help="do not read or write the caption/similarity cache",
    )

    gen = p.add_argument_group("step 2: prompt, guidance, generation (paper §3.2)")
    gen.add_argument(
        "--prompt",
        default=None,
        help="complete ('A picture of a [label], [caption]'), label, caption or none (table 3) [default: complete]",
    )
    gen.add_argument("--label-template", default=None, help="textual label l [default: 'A picture of a {label}']")
    gen.add_argument(
        "--prompt-weighting",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weight the label and caption tokens of the text encoding by w_l and w_c [default: on]",
    )
    gen.add_argument(
        "--weighting",
        default=None,
        help="how the weights act: literal (multiply the encoder's output rows, the paper's wording), compel "
        "(empty + (z - empty)*w, via the compel library) or mean-restore (multiply, then restore the mean, as "
        "diffusers' long-prompt-weighting pipeline) [default: literal]",
    )
    gen.add_argument("--label-weight", type=float, default=None, help="w_l [default: 1.5]")
    gen.add_argument("--caption-weight", type=float, default=None, help="w_c [default: 0.9]")
    gen.add_argument(
        "--guidance",
        default=None,
        help="'paper' for g = f(s*) = -4s^2 + 2s + 1, or a constant scale [default: paper]",
    )
    gen.add_argument(
        "--guidance-floor",
        default=None,
        metavar="G",
        help="apply max(f(s*), G): f is negative for s* > 0.81 (e.g. with --similarity softmax), which would push "
        "away from the prompt; 'none' applies f as it is [default: 0]",
    )
    gen.add_argument(
        "--diffusers-guidance",
        action="store_true",
        default=None,
        help="reproduce diffusers: no classifier-free guidance when g <= 1",
    )
    gen.add_argument("--negative-prompt", default=None, help="unconditional prompt [default: '']")
    gen.add_argument(
        "--noise",
        type=float,
        default=None,
        help="noise rate n = img2img strength, in [0, 1] (paper: 0.3/0.5/0.7) [default: 0.5]",
    )
    gen.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps; img2img runs int(steps*noise) [default: 100]",
    )
    gen.add_argument("--multiplier", "-k", type=int, default=None, help="augmented images per original [default: 1]")
    gen.add_argument("--seed", type=int, default=None, help="run seed; every item's seeds derive from it [default: 0]")
    gen.add_argument("--batch-size", type=int, default=None, help="images per UNet call [default: 4]")

    scale = p.add_argument_group("engines (docs/scaling.md): who does the work, never what it makes")
    scale.add_argument(
        "--engine", default=None, help="local (this process) or ray (a local Ray, or --ray-address) [default: local]"
    )
    scale.add_argument(
        "--workers",
        type=int,
        default=None,
        help="ray: workers, each loading the models once [default: 1 per GPU, or 1]",
    )
    scale.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="ray: GPUs per worker; 0.5 puts two workers on a GPU [default: 1 where there are GPUs, else 0]",
    )
    scale.add_argument(
        "--ray-address", default=None, help="ray: join this cluster (e.g. auto, or HOST:6379) instead of a local Ray"
    )
    scale.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the UNet: minutes of warm-up per image shape, then faster steps (CUDA)",
    )
    scale.add_argument(
        "--vae-tiling",
        default=None,
        help="encode/decode images larger than the model's size in tiles: auto (on CUDA), on, off [default: auto]",
    )
    scale.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="print the work (images, UNet evaluations) and an estimated time from one calibration batch; "
        "write nothing",
    )
    scale.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="items per unit of work handed to a worker; does not change any output [default: 64]",
    )

    other = p.add_argument_group(
        "other methods (text2img, diverse_caption, instruct_pix2pix, boomerang, retrieval, randaugment, "
        "random_erasing, cutmix)"
    )
    other.add_argument(
        "--template",
        action="append",
        default=None,
        help="text2img sentence template with {label} (repeatable) [default: built-in list]",
    )
    other.add_argument(
        "--text-model",
        default=None,
        help="local causal language model (hub id or folder; "
        "tiny:lm for tests) for text2img sentences, --summarize and instructions",
    )
    other.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="sentences/descriptions/instructions per label from the text model [default: 10]",
    )
    other.add_argument(
        "--summarize",
        action="store_true",
        default=None,
        help="diverse_caption: summarise each label's captions into domain descriptions with --text-model (ALIA)",
    )
    other.add_argument(
        "--instruction",
        action="append",
        default=None,
        help="instruct_pix2pix edit instruction (repeatable) [default: built-in list]",
    )
    other.add_argument(
        "--image-guidance", type=float, default=None, help="instruct_pix2pix image guidance [default: 1.5]"
    )
    other.add_argument(
        "--instruct-model", default=None, help="InstructPix2Pix model [default: timbrooks/instruct-pix2pix]"
    )
    other.add_argument("--boomerang-prompt", default=None, help="boomerang prompt: empty or label [default: empty]")
    other.add_argument("--pool", default=None, help="retrieval: folder of unlabelled images to retrieve from")
    other.add_argument(
        "--retrieval-query",
        default=None,
        help="retrieval: text ('a photo of a {label}'), image (each training image) or both [default: text]",
    )
    other.add_argument(
        "--duplicate-threshold",
        type=float,
        default=None,
        help="retrieval: drop pool images with this cosine similarity to a training image [default: 0.95]",
    )
    other.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="DIR",
        help="retrieval: also drop pool images this similar to any image under DIR, e.g. the test set "
        "(repeatable; each drop is listed in errors.jsonl)",
    )
    other.add_argument(
        "--concepts",
        default=None,
        help="learned concepts from sgid learn-concepts: prompts use each class's token instead of its label text",
    )
    other.add_argument("--lora", default=None, help="LoRA weights (folder or .safetensors) for Stable Diffusion")
    other.add_argument("--lora-scale", type=float, default=None, help="LoRA strength [default: 1.0]")
    other.add_argument(
        "--perturb-probability",
        type=float,
        default=None,
        help="randaugment, random_erasing, cutmix: chance each image is perturbed; the paper trains Random Erasing "
        "and CutMix at 0.5, unperturbed images are plain copies [default: 1.0]",
    )

    io = p.add_argument_group("input and output")
    io.add_argument("--label-names", help="CSV or JSON mapping class folder names to label text")
    io.add_argument(
        "--include-originals",
        action="store_true",
        default=None,
        help="also link the originals into OUT so it is a complete training set",
    )
    io.add_argument(
        "--keep-generation-size",
        action="store_true",
        default=None,
        help="save at the generation size instead of the original size",
    )
    io.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse larger images (decompression bombs) [default: 89478485]",
    )
    io.add_argument("--min-side", type=int, default=None, help="refuse images with a smaller side [default: 8]")
    io.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="start over in an OUT that holds an earlier run (removes only what sgid wrote)",
    )
    io.add_argument("--quiet", "-q", action="store_true", default=None, help="no progress bars or summary")
    p.set_defaults(run=run)


def options_from_args(
    args: argparse.Namespace, skip: tuple[str, ...] = ("input", "out", "run", "command")
) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in skip and v is not None}


def run(args: argparse.Namespace) -> int:
    from sgid.pipeline import augment

    options = options_from_args(args)
    result = augment(args.input, args.out, print_summary=True, **options)
    if options.get("dry_run"):
        print("\n".join(result.lines()))
    return 0
