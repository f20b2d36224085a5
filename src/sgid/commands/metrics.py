"""``sgid metrics RUN_DIR --out OUT``: how far an augment run's generated images sit from the real data,
overall and per class: similarity to the originals (paper figure 3), diversity, CLIP score, FID and KID."""

from __future__ import annotations

import argparse
from typing import Any

from sgid.commands.augment import add_run_reader_options

HELP = "measure generated vs real images: similarity, diversity, CLIP score, FID, KID (overall and per class)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("metrics", help=HELP, description=__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of sgid augment (or of sgid filter)")
    p.add_argument("--out", "-o", required=True, help="output folder: metrics.json, metrics.md, images.jsonl, plots/")
    p.add_argument(
        "--reference",
        metavar="REAL_DIR",
        help="real images, one subfolder per class, for FID and KID [default: the run's input folder]",
    )
    p.add_argument("--source-dir", help="where the run's real input images are now [default: run.json's input]")
    p.add_argument(
        "--features",
        default="clip",
        help="features for FID and KID: clip (the scorer's image "
        "embeddings) or inception (needs --inception-weights) [default: clip]",
    )
    p.add_argument(
        "--inception-weights",
        help="Inception-v3 weights file on disk: FID's "
        "pt_inception-2015-12-05-6726825d.pth (needs torch-fidelity) or torchvision's inception_v3",
    )
    p.add_argument("--kid-subsets", type=int, default=100, help="KID: random subsets averaged [default: 100]")
    p.add_argument(
        "--kid-subset-size",
        type=int,
        default=1000,
        help="KID: images per subset, capped by the smaller set [default: 1000]",
    )
    p.add_argument("--seed", type=int, default=0, help="KID subset sampling seed [default: 0]")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    add_run_reader_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sgid.commands.augment import warn_unused_model_flags
    from sgid.features import ClipOptions
    from sgid.metrics import metrics_run

    warn_unused_model_flags(args, "metrics")

    metrics_run(
        args.run_dir,
        args.out,
        reference=args.reference,
        features=args.features,
        inception_weights=args.inception_weights,
        source_dir=args.source_dir,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        seed=args.seed,
        plots=args.plots,
        runtime=ClipOptions.from_args(args),
    )
    return 0
