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
    "--sd-model": "Stable Diffusion 1.x/2.x or XL (its family read from its configs, or --backend; --control adds "
    "a ControlNet): hub id, diffusers folder or single .safetensors file [default: the preset's]",
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


def setting(group: Any, *flags: str, help: str, shown: str | None = None, **kwargs: Any) -> None:
    """A flag that sets a field of :class:`~sgid.config.AugmentConfig` (or of its caption settings). It defaults
    to None, "not given" (the method's, the preset's or the declared default applies), and its help ends with
    the field's declared default (or ``shown``), so the default is written once, where the field is."""
    from sgid.options import declared_defaults, default_text, with_default

    shown = shown if shown is not None else default_text(declared_defaults().get(flags[0][2:].replace("-", "_")))
    group.add_argument(*flags, default=None, help=with_default(help, shown), **kwargs)


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generator backend (docs/backends.md)")
    setting(
        group,
        "--backend",
        help=(
            "the --sd-model's model family: sd (1.x/2.x), sdxl (instruct_pix2pix: --method instruct_pix2pix's own); "
            "without --sd-model, the preset's model of that family"
        ),
        shown="found from the checkpoint's configs",
    )
    setting(
        group,
        "--control",
        help="ControlNet-guided img2img: the condition image computed from each source, canny (OpenCV edges) or "
        "depth (a depth-estimation model)",
        shown="none",
    )
    setting(
        group,
        "--controlnet",
        help="the ControlNet: hub id, diffusers folder or .safetensors file",
        shown="the --control kind's ControlNet for the model family, e.g. lllyasviel/sd-controlnet-canny",
    )
    for flag, kind, text in (
        ("--control-scale", float, "ControlNet conditioning scale (its residuals' weight; diffusers' img2img default)"),
        ("--canny-low", int, "canny: lower hysteresis threshold"),
        ("--canny-high", int, "canny: upper hysteresis threshold"),
    ):
        setting(group, flag, type=kind, help=text)
    setting(
        group,
        "--control-model",
        help="depth: the depth-estimation model, hub id or folder",
        shown="Intel/dpt-hybrid-midas",
    )


def warn_unused_model_flags(args: argparse.Namespace, command: str) -> None:
    """Model flags a CLIP-only command accepts but does not use: one warning line each."""
    from sgid.progress import warn

    for name in ("captioner", "sd_model", "sd_config"):
        if getattr(args, name, None) is not None:
            flag = "--" + name.replace("_", "-")
            warn(f"{flag} does not apply to sgid {command} (it uses only CLIP: --models, --scorer); it is ignored")


def register(subparsers: Any) -> None:
    from sgid.methods import METHODS, method_options
    from sgid.options import add_arguments

    p = subparsers.add_parser("augment", help=HELP, description=__doc__)
    p.add_argument("input", help="input folder: INPUT/<class>/<image>")
    p.add_argument("--out", "-o", required=True, help="output folder (imagefolder + metadata.jsonl)")
    setting(
        p,
        "--method",
        help=f"augmentation method: {METHOD_NAMES}; or a chain a+b (b applied to a's outputs, e.g. text2img+sgid)",
    )
    setting(
        p,
        "--preset",
        help="dataset preset from the paper's table 8: cifar10, cifar100, "
        "caltech101, stanford_cars, flowers102, oxford_pets, dtd (explicit flags override it)",
    )
    add_model_options(p)
    add_backend_options(p)
    setting(
        p,
        "--safety-checker",
        action="store_true",
        help="run SD's safety checker; flagged (blacked-out) outputs are never kept as training images",
    )
    setting(
        p,
        "--on-flagged",
        choices=["drop", "retry"],
        help="with --safety-checker, a flagged image is dropped (listed in errors.jsonl) or made again with the "
        "next derived seed, up to --flagged-tries tries in all, every flagged seed recorded",
    )
    setting(p, "--flagged-tries", type=int, help="--on-flagged retry: tries per image in all")

    cap = p.add_argument_group("step 1: captions and similarity (paper §3.1)")
    setting(
        cap,
        "--caption",
        help="which caption goes into the prompt: clip (most similar of all), "
        "beam or nucleus (seeded random pick from that set)",
    )
    setting(
        cap,
        "--similarity",
        help="s*: cosine (CLIP ViT-B/32 gives about 0.15-0.40, where f(s*) stays near 1.2) or softmax over the "
        "candidates (anywhere in (0, 1]; f < 1 above 0.5, < 0 above 0.81)",
    )
    setting(cap, "--beam-captions", type=int, help="beam-search captions per image")
    setting(cap, "--num-beams", type=int, help="beam width; must be >= --beam-captions")
    setting(cap, "--nucleus-captions", type=int, help="nucleus-sampled captions per image")
    setting(cap, "--top-p", type=float, help="nucleus sampling p")
    setting(cap, "--top-k", type=int, help="top-k before nucleus; 0 disables")
    setting(cap, "--min-length", type=int, help="caption min length, BLIP's convention")
    setting(cap, "--max-length", type=int, help="caption max length")
    setting(
        cap,
        "--repetition-penalty",
        type=float,
        help="for beam and nucleus captions; 1.0 = none, as the paper gives none (BLIP's own code uses 1.1 for its "
        "nucleus sampling and 1.0 for beam search)",
    )
    setting(cap, "--caption-batch-size", type=int, help="images per BLIP/CLIP call")
    setting(cap, "--no-cache", action="store_true", help="do not read or write the caption/similarity cache")

    gen = p.add_argument_group("step 2: prompt, guidance, generation (paper §3.2)")
    setting(gen, "--prompt", help="complete ('A picture of a [label], [caption]'), label, caption or none (table 3)")
    setting(gen, "--label-template", help="textual label l")
    setting(
        gen,
        "--prompt-weighting",
        action=argparse.BooleanOptionalAction,
        help="weight the label and caption tokens of the text encoding by w_l and w_c",
        shown="on",
    )
    setting(
        gen,
        "--weighting",
        help="how the weights act: literal (multiply the encoder's output rows, the paper's wording), compel "
        "(empty + (z - empty)*w, via the compel library) or mean-restore (multiply, then restore the mean, as "
        "diffusers' long-prompt-weighting pipeline)",
    )
    setting(gen, "--label-weight", type=float, help="w_l")
    setting(gen, "--caption-weight", type=float, help="w_c")
    setting(gen, "--guidance", help="'paper' for g = f(s*) = -4s^2 + 2s + 1, or a constant scale")
    setting(
        gen,
        "--guidance-floor",
        metavar="G",
        help="apply max(f(s*), G): f is negative for s* > 0.81 (e.g. with --similarity softmax), which would push "
        "away from the prompt; 'none' applies f as it is",
    )
    setting(
        gen,
        "--diffusers-guidance",
        action="store_true",
        help="reproduce diffusers: no classifier-free guidance when g <= 1",
    )
    setting(gen, "--negative-prompt", help="unconditional prompt")
    setting(gen, "--noise", type=float, help="noise rate n = img2img strength, in [0, 1] (paper: 0.3/0.5/0.7)")
    setting(gen, "--steps", type=int, help="denoising steps; img2img runs int(steps*noise)")
    setting(gen, "--multiplier", "-k", type=int, help="augmented images per original")
    setting(gen, "--seed", type=int, help="run seed; every item's seeds derive from it")
    setting(gen, "--batch-size", type=int, help="images per UNet call")

    scale = p.add_argument_group("engines (docs/scaling.md): who does the work, never what it makes")
    setting(scale, "--engine", help="local (this process) or ray (a local Ray, or --ray-address)")
    setting(
        scale,
        "--workers",
        type=int,
        help="ray: workers, each loading the models once",
        shown="1 per GPU, or 1",
    )
    setting(
        scale,
        "--gpus-per-worker",
        type=float,
        help="ray: GPUs per worker; 0.5 puts two workers on a GPU",
        shown="1 where there are GPUs, else 0",
    )
    setting(scale, "--ray-address", help="ray: join this cluster (e.g. auto, or HOST:6379) instead of a local Ray")
    setting(
        scale,
        "--compile",
        action="store_true",
        help="torch.compile the UNet: minutes of warm-up per image shape, then faster steps (CUDA)",
    )
    setting(
        scale,
        "--vae-tiling",
        help="encode/decode images larger than the model's size in tiles: auto (on CUDA), on, off",
    )
    setting(
        scale,
        "--dry-run",
        action="store_true",
        help="print the work (images, UNet evaluations) and an estimated time from one calibration batch; "
        "write nothing",
    )
    setting(
        scale,
        "--shard-size",
        type=int,
        help="items per unit of work handed to a worker; does not change any output",
    )

    methods = ", ".join(name for name in METHODS.names() if name != "sgid")
    other = p.add_argument_group(f"other methods ({methods}): the options each declares")
    add_arguments(other, method_options())
    setting(
        other,
        "--concepts",
        help="learned concepts from sgid learn-concepts: prompts use each class's token instead of its label text",
    )
    setting(other, "--lora", help="LoRA weights (folder or .safetensors) for Stable Diffusion")
    setting(other, "--lora-scale", type=float, help="LoRA strength")

    io = p.add_argument_group("input and output")
    setting(io, "--label-names", help="CSV or JSON mapping class folder names to label text")
    for flag, text in (
        ("--include-originals", "also link the originals into OUT so it is a complete training set"),
        ("--keep-generation-size", "save at the generation size instead of the original size"),
    ):
        setting(io, flag, action="store_true", help=text)
    setting(io, "--max-pixels", type=int, help="refuse larger images (decompression bombs)")
    setting(io, "--min-side", type=int, help="refuse images with a smaller side")
    overwrite = "start over in an OUT that holds an earlier run (removes only what sgid wrote)"
    setting(io, "--overwrite", action="store_true", help=overwrite)
    setting(io, "--quiet", "-q", action="store_true", help="no progress bars or summary")
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
