"""``sgid learn-concepts INPUT --out DIR``: learn concepts per class folder, for ``sgid augment --concepts DIR``.

``--method textual_inversion`` (the default) learns one token per class; ``--method lora`` fine-tunes one LoRA on
all classes at once with one token per class (DreamBooth-LoRA, optionally with prior preservation). A rerun with
the same settings skips finished work and resumes unfinished work from its last checkpoint.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "learn per-class concepts (textual inversion tokens, or a DreamBooth-LoRA) for sgid augment --concepts"
METHODS = ("textual_inversion", "lora")  # sgid.concepts.CONCEPT_METHODS (not imported here: no torch for --help)


LORA_VALUES = (  # flag, type, help
    ("--rank", int, "LoRA rank [default: 4]"),
    ("--alpha", float, "LoRA alpha; scale = alpha / rank [default: the rank]"),
    ("--token-learning-rate", float, "AdamW learning rate of the class tokens [default: 5e-4]"),
    (
        "--prior-images",
        int,
        "prior preservation: N class images per class from the frozen model, stored and reused [default: 0, off]",
    ),
    ("--prior-loss-weight", float, "weight of the prior loss [default: 1.0]"),
    ("--prior-steps", int, "denoising steps per class image [default: 50]"),
    ("--samples-per-class", int, "sample images per class at each checkpoint (fixed seeds) [default: 2; 0: none]"),
    ("--sample-steps", int, "denoising steps per sample image [default: 25]"),
)
LORA_SWITCHES = (  # flag, settings field, value, help
    ("--no-tokens", "tokens", False, "learn no tokens: the LoRA alone, prompts name each class by its label"),
    ("--train-text-encoder", "text_encoder", True, "also train a LoRA on the text encoder's attention projections"),
    ("--no-gradient-checkpointing", "gradient_checkpointing", False, "faster, more memory: keep activations"),
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("learn-concepts", help=HELP, description=__doc__)
    p.add_argument("input", help="input folder: INPUT/<class>/<image>")
    p.add_argument(
        "--out", "-o", required=True, help="concepts folder: concepts.json + <class>.safetensors (+ LoRA weights)"
    )
    p.add_argument(
        "--method",
        default="textual_inversion",
        help=f"how concepts are learned: {' or '.join(METHODS)} [default: textual_inversion]",
    )

    models = p.add_argument_group("model")
    models.add_argument(
        "--models",
        default="default",
        help="model preset: default (SD v1.5) or tiny (random weights, offline, for testing) [default: default]",
    )
    models.add_argument(
        "--sd-model", help="Stable Diffusion 1.x/2.x: hub id, diffusers folder or single .safetensors file"
    )
    models.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N [default: auto]")
    models.add_argument(
        "--dtype",
        default="auto",
        help="UNet/VAE precision: auto (fp16 on cuda, fp32 otherwise), fp32, fp16, bf16; "
        "what is learned always trains in fp32 [default: auto]",
    )
    models.add_argument("--cache-dir", help="where tiny models live [default: ~/.cache/sgid]")

    train = p.add_argument_group("training, both methods (defaults per method: see docs/concepts.md)")
    train.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimisation steps: per class (textual_inversion, 1000) or of the whole joint run (lora, 500 per class)",
    )
    train.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="AdamW learning rate, used as given: of the token (textual_inversion, 0.002) or of the LoRA (lora, 1e-4)",
    )
    train.add_argument("--batch-size", type=int, default=None, help="images per step [default: 4 / lora: 1]")
    train.add_argument(
        "--init-token",
        default=None,
        help="word the new tokens start from (one token) [default: the label's last word if it is one token, "
        "else 'object', else 'the']",
    )
    train.add_argument(
        "--resolution", type=int, default=None, help="training crop size in pixels [default: the model's, 512 for SD]"
    )
    train.add_argument("--seed", type=int, default=None, help="every random choice derives from it [default: 0]")
    train.add_argument(
        "--checkpoint-every", type=int, default=None, help="save the training state every N steps [default: 100]"
    )

    lora = p.add_argument_group("--method lora (defaults: diffusers' DreamBooth-LoRA example)")
    for flag, kind, text in LORA_VALUES:
        lora.add_argument(flag, type=kind, default=None, help=text)
    for flag, field, value, text in LORA_SWITCHES:
        lora.add_argument(flag, dest=field, action="store_const", const=value, default=None, help=text)

    io = p.add_argument_group("input and output")
    io.add_argument("--classes", help="comma-separated class folders to learn [default: all]")
    io.add_argument("--label-names", help="CSV or JSON mapping class folder names to label text (init tokens)")
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a DIR holding concepts learned with other settings (removes only what sgid wrote)",
    )
    io.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summary")
    p.set_defaults(run=run)


SETTING_FLAGS = {  # settings field -> flag
    "steps": "--steps",
    "learning_rate": "--learning-rate",
    "batch_size": "--batch-size",
    "init_token": "--init-token",
    "resolution": "--resolution",
    "seed": "--seed",
    "checkpoint_every": "--checkpoint-every",
    "rank": "--rank",
    "alpha": "--alpha",
    "token_learning_rate": "--token-learning-rate",
    "tokens": "--no-tokens",
    "text_encoder": "--train-text-encoder",
    "prior_images": "--prior-images",
    "prior_loss_weight": "--prior-loss-weight",
    "prior_steps": "--prior-steps",
    "samples_per_class": "--samples-per-class",
    "sample_steps": "--sample-steps",
    "gradient_checkpointing": "--no-gradient-checkpointing",
}


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from sgid.concepts import CONCEPT_METHODS, learn_concepts
    from sgid.errors import SgidError

    kind = CONCEPT_METHODS.get(args.method)
    fields = {f.name for f in dataclasses.fields(kind.settings_type)}
    given = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}
    foreign = [SETTING_FLAGS[name] for name in given if name not in fields]
    if foreign:
        raise SgidError(f"{', '.join(foreign)} only applies to --method lora, not --method {args.method}")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    learn_concepts(
        args.input,
        args.out,
        kind.settings_type(**given),
        method=args.method,
        models=args.models,
        sd_model=args.sd_model,
        device=args.device,
        dtype=args.dtype,
        cache_dir=args.cache_dir,
        classes=classes,
        label_names=args.label_names,
        quiet=args.quiet,
        overwrite=args.overwrite,
    )
    return 0
