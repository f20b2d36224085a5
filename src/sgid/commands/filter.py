"""``sgid filter RUN_DIR --filters label,prompt,... --out OUT``: judge every generated image of an augment
run, record each filter's score and decision, and write the kept images as a new dataset (nothing is
deleted)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sgid.commands.augment import add_run_reader_options

HELP = "filter the generated images of an augment run (CLIP label/prompt/original, threshold, best-of-k, human, ...)"
FILTER_NAMES = "label, prompt, original, threshold, best_of_k, realfake, confidence, human"  # a test pins it
RANK_BY_NAMES = "original, prompt, label, threshold, realfake, confidence, human"  # every filter but best_of_k


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("filter", help=HELP, description=__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of sgid augment (metadata.jsonl + images)")
    p.add_argument(
        "--filters",
        required=True,
        help=f"comma-separated, applied in this order: {FILTER_NAMES}; "
        "each decides only about the images the earlier ones kept",
    )
    p.add_argument(
        "--out",
        "-o",
        required=True,
        help="output folder: kept images (imagefolder), decisions.jsonl, "
        "report.json/.md; a previous sgid filter output there is replaced",
    )
    p.add_argument("--source-dir", help="where the run's real input images are now [default: run.json's input]")
    rules = p.add_argument_group("filter settings")
    rules.add_argument(
        "--label-template",
        default="a photo of a {label}",
        help="label: zero-shot prompt per class [default: 'a photo of a {label}']",
    )
    rules.add_argument(
        "--threshold",
        type=float,
        help="threshold: lowest CLIP similarity to the source image to "
        "keep, in [-1, 1] (required with the threshold filter)",
    )
    rules.add_argument("--keep", type=int, default=1, help="best_of_k: augmentations kept per source [default: 1]")
    rules.add_argument(
        "--rank-by",
        default="original",
        help=f"best_of_k: the filter whose score ranks them: {RANK_BY_NAMES} [default: original]",
    )
    rules.add_argument("--folds", type=int, default=5, help="realfake: cross-validation folds [default: 5]")
    rules.add_argument(
        "--real-threshold",
        type=float,
        default=0.5,
        help="realfake: keep when the out-of-fold P(real) is at least this [default: 0.5]",
    )
    rules.add_argument(
        "--classifier",
        type=Path,
        help="confidence: a classifier trained on the real data, saved by sgid evaluate --save-models",
    )
    rules.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="confidence: reject when the "
        "classifier's top class is another one with at least this probability [default: 0.5]",
    )
    rules.add_argument("--seed", type=int, default=0, help="realfake: seed of the fold assignment [default: 0]")
    rules.add_argument(
        "--review-db",
        type=Path,
        help="human: the database sgid review wrote (its accept/reject and best-of-K selections)",
    )
    add_run_reader_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sgid.commands.augment import warn_unused_model_flags
    from sgid.features import ClipOptions
    from sgid.filters import FilterOptions, filter_run

    warn_unused_model_flags(args, "filter")

    options = FilterOptions(
        threshold=args.threshold,
        keep=args.keep,
        rank_by=args.rank_by,
        folds=args.folds,
        real_threshold=args.real_threshold,
        classifier=args.classifier,
        confidence_threshold=args.confidence_threshold,
        label_template=args.label_template,
        seed=args.seed,
        review_db=args.review_db,
    )
    filter_run(
        args.run_dir,
        args.out,
        args.filters,
        options=options,
        source_dir=args.source_dir,
        runtime=ClipOptions.from_args(args),
    )
    return 0
