"""``sgid learn-concepts INPUT --out DIR``: learn one textual-inversion token per class folder.

For use with ``sgid augment --concepts DIR``, which writes each class's token where the label was. A rerun with
the same settings skips finished classes and resumes unfinished ones from their last checkpoint.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "learn one textual-inversion token per class folder (for sgid augment --concepts)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("learn-concepts", help=HELP, description=__doc__)
    p.add_argument("input", help="input folder: INPUT/<class>/<image>")
    p.add_argument("--out", "-o", required=True, help="concepts folder: concepts.json + <class>.safetensors")

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
        "the learned embedding is always fp32 [default: auto]",
    )
    models.add_argument("--cache-dir", help="where tiny models live [default: ~/.cache/sgid]")

    train = p.add_argument_group("training (defaults: DA-Fusion's settings of the diffusers example)")
    train.add_argument("--steps", type=int, default=None, help="optimisation steps per class [default: 1000]")
    train.add_argument(
        "--learning-rate", type=float, default=None, help="AdamW learning rate, used as given [default: 0.002]"
    )
    train.add_argument("--batch-size", type=int, default=None, help="images per step [default: 4]")
    train.add_argument(
        "--init-token",
        default=None,
        help="word the new token starts from (one token) [default: the label's last word if it is one token, "
        "else 'object', else 'the']",
    )
    train.add_argument(
        "--resolution", type=int, default=None, help="training crop size in pixels [default: the model's, 512 for SD]"
    )
    train.add_argument("--seed", type=int, default=None, help="every random choice derives from it [default: 0]")
    train.add_argument(
        "--checkpoint-every", type=int, default=None, help="save the training state every N steps [default: 100]"
    )

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


SETTING_FLAGS = ("steps", "learning_rate", "batch_size", "init_token", "resolution", "seed", "checkpoint_every")


def run(args: argparse.Namespace) -> int:
    from sgid.concepts import TrainSettings, learn_concepts

    given = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    learn_concepts(
        args.input,
        args.out,
        TrainSettings(**given),
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
