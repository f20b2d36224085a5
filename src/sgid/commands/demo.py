"""``sgid demo --out DIR``: augment a small built-in dataset and write an HTML page of the results."""

from __future__ import annotations

import argparse
from typing import Any

from sgid.commands.augment import add_backend_options, add_model_options


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="run SGID on photos bundled with scikit-image; writes DIR/index.html", description=__doc__
    )
    p.add_argument("--out", "-o", default="demo-out", help="output folder [default: demo-out]")
    add_model_options(p, models_default="tiny")
    add_backend_options(p)
    p.set_defaults(models="tiny")
    p.add_argument("--multiplier", "-k", type=int, default=2, help="augmented images per original [default: 2]")
    p.add_argument("--noise", type=float, default=None, help="noise rate [default: 0.5]")
    p.add_argument("--steps", type=int, default=None, help="denoising steps [default: 100]")
    p.add_argument("--seed", type=int, default=None, help="run seed [default: 0]")
    p.add_argument("--overwrite", action="store_true", default=None, help="start the augmentation over")
    p.add_argument("--quiet", "-q", action="store_true", default=None, help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sgid.commands.augment import options_from_args
    from sgid.demo import run_demo
    from sgid.progress import note

    options = options_from_args(args, skip=("out", "run", "command"))
    index = run_demo(args.out, print_summary=True, **options)
    note(f"open {index} in a browser", bool(args.quiet))
    return 0
