"""``sgid evaluate --train DIR --test DIR --methods baseline,randaugment,generated --out OUT``: does it help?

Trains the same classifier with and without each augmentation over several seeds (the same seeds for every
method) and reports mean ± std accuracy, per-class accuracy and a paired t-test against the baseline, in
OUT/results.md (rows = methods, columns = datasets + Avg, like the SGID paper's table 1) and OUT/results.json.
Rerunning the same command resumes an interrupted evaluation without redoing finished runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from sgid.errors import SgidError

HELP = "train a classifier with and without augmentations over several seeds and test the difference"
PERTURBATION_METHODS = "random_erasing,cutmix,randaugment,moex"


def _proportions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers in [0, 1] separated by commas, got {text!r}") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = p.add_argument_group("data (image folders, or one of the paper's datasets through torchvision)")
    data.add_argument("--train", metavar="DIR", help="training images: DIR/<class>/<image>")
    data.add_argument("--test", metavar="DIR", help="test images: DIR/<class>/<image>")
    data.add_argument(
        "--val",
        metavar="DIR",
        help="validation images, used to choose the lr of pre-trained "
        "backbones [default: 10%% of the training set held out]",
    )
    data.add_argument(
        "--generated",
        action="extend",
        nargs="+",
        default=[],
        metavar="[NAME=]DIR",
        help="output folder(s) of sgid augment (or sgid filter), each a method of its own: "
        "--generated sgid=runs/sgid text2img=runs/t2i gives the methods sgid and text2img (combine them: "
        "sgid+randaugment); a bare DIR is the method 'generated'; each image follows its source into subsets",
    )
    data.add_argument(
        "--name",
        metavar="NAME",
        help="dataset name, the column of results.md [default: from "
        "--train; cifar10 and cifar100 select the CIFAR recipe of pre-trained backbones]",
    )
    data.add_argument(
        "--dataset",
        metavar="NAME[,NAME]",
        help="instead of folders: cifar10, cifar100, caltech101, "
        "stanford_cars, flowers102, oxford_pets, dtd; never downloaded",
    )
    data.add_argument("--data-root", metavar="DIR", help="folder holding the --dataset files")
    data.add_argument(
        "--export-train",
        metavar="DIR",
        help="write the --dataset training split as an image folder (input for sgid augment) and exit",
    )
    data.add_argument("--shots", type=int, metavar="K", help="k-shot: K training images per class, drawn per seed")
    data.add_argument(
        "--fraction",
        type=float,
        metavar="F",
        help="a stratified fraction of the training set, drawn per seed (e.g. 0.1)",
    )

    method = p.add_argument_group("methods")
    method.add_argument(
        "--methods",
        metavar="LIST",
        help="comma-separated: baseline, random_erasing, cutmix, randaugment, moex, the names of the "
        "--generated sets (generated for a bare DIR), and '+' combinations such as sgid+randaugment; baseline "
        f"is always included [default: baseline,{PERTURBATION_METHODS} and every --generated set]",
    )
    method.add_argument(
        "--mix",
        metavar="MODE",
        default="add",
        help="how generated images join the real ones: add, replace, swap, balance [default: add]",
    )
    method.add_argument(
        "--proportion",
        type=_proportions,
        default=(),
        metavar="P[,P...]",
        help="p in [0, 1] for --mix replace/swap (required) or add (fraction of generated images "
        "added); several values run a sweep",
    )

    model = p.add_argument_group("classifier")
    model.add_argument(
        "--backbone",
        metavar="NAME",
        default="resnet50",
        help="resnet50, resnet18, wrn28_10, vit_b16_in21k, clip_vit_b32, zero_shot_clip, small_cnn [default: resnet50]",
    )
    model.add_argument(
        "--seeds", metavar="S", type=int, default=5, help="seeds 0..S-1, the same for every method [default: 5]"
    )
    model.add_argument(
        "--epochs", metavar="E", type=int, help="[default: the backbone's recipe, e.g. 300 for resnet50]"
    )
    model.add_argument(
        "--batch-size", metavar="B", type=int, help="[default: the backbone's recipe, e.g. 256 for resnet50]"
    )
    model.add_argument(
        "--lr", metavar="LR", type=float, help="[default: the recipe's; searched on validation for ViT/CLIP]"
    )
    model.add_argument(
        "--image-size",
        metavar="N",
        type=int,
        help="input size [default: the images' own size for small images and from-scratch networks, else 224]",
    )
    model.add_argument("--linear-probe", action="store_true", help="train only the head of a pre-trained backbone")
    model.add_argument("--weights", metavar="PATH", help="pre-trained weights: a local file or a timm/open_clip name")
    model.add_argument("--zero-shot-row", action="store_true", help="add zero-shot CLIP as a reference row")
    model.add_argument(
        "--zero-shot-weights",
        metavar="PATH",
        help="CLIP weights for that row: a local file or an open_clip tag [default: laion2b_s34b_b79k]",
    )
    model.add_argument("--device", metavar="DEVICE", default="auto", help="auto, cpu, cuda, cuda:N [default: auto]")
    model.add_argument("--threads", metavar="N", type=int, help="torch CPU threads [default: the CPUs available]")
    model.add_argument("--workers", metavar="N", type=int, default=0, help="data-loading processes [default: 0]")

    verdict = p.add_argument_group("verdict")
    verdict.add_argument(
        "--compare-to",
        metavar="ROW",
        default="baseline",
        help="what each row is tested against: baseline, best (the column's best row; it is tested against the "
        "runner-up) or a method of --methods [default: baseline]",
    )
    verdict.add_argument(
        "--correction",
        metavar="NAME",
        default="none",
        help="multiple-comparison correction over the rows of each column: none or holm [default: none]",
    )

    out = p.add_argument_group("output")
    out.add_argument("--out", "-o", metavar="DIR", help="output folder: results.md, results.json, plots/, runs/")
    out.add_argument("--save-models", action="store_true", help="save every classifier under OUT/models/")
    out.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds another evaluation")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summary")
    p.set_defaults(run=run)


def _check_sources(args: argparse.Namespace) -> None:
    if args.dataset:
        if args.train or args.test or args.val:
            raise SgidError("pass either --dataset (with --data-root) or --train/--test folders, not both")
        if not args.data_root:
            raise SgidError("--dataset needs --data-root DIR (the folder holding the dataset files)")
        if args.generated and "," in args.dataset:
            raise SgidError("--generated belongs to one dataset; evaluate several datasets one --dataset at a time")
    elif not (args.train and args.test):
        raise SgidError("pass --train DIR and --test DIR (image folders), or --dataset NAME --data-root DIR")
    if not args.out and not args.export_train:
        raise SgidError("--out DIR is required")


def _check_disjoint(args: argparse.Namespace) -> None:
    """The test folder is neither a training nor a validation folder, nor inside or around one: its images
    would be learned from (or chosen on), and the accuracy would not be a test accuracy."""
    from pathlib import Path

    test = Path(args.test).expanduser().resolve()
    for flag, folder in (("--train", args.train), ("--val", args.val)):
        if folder is None:
            continue
        other = Path(folder).expanduser().resolve()
        if other == test or other in test.parents or test in other.parents:
            raise SgidError(
                f"{flag} {folder} and --test {args.test} overlap: the test images would be "
                f"{'trained on' if flag == '--train' else 'used to choose the learning rate'}; "
                f"pass separate folders"
            )


def _generated_names(args: argparse.Namespace) -> list[str]:
    from sgid.evaluate.generated import names_of
    from sgid.evaluate.perturb import PERTURBATIONS

    return names_of(args.generated, PERTURBATIONS.names())


def _config(args: argparse.Namespace) -> Any:
    from sgid.evaluate import EvalConfig

    default_methods = ",".join(["baseline", PERTURBATION_METHODS, *_generated_names(args)])
    return EvalConfig(
        methods=tuple((args.methods or default_methods).split(",")),
        backbone=args.backbone,
        seeds=args.seeds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        shots=args.shots,
        fraction=args.fraction,
        mix=args.mix,
        proportions=tuple(args.proportion),
        image_size=args.image_size,
        linear_probe=args.linear_probe,
        weights=args.weights,
        zero_shot_row=args.zero_shot_row,
        zero_shot_weights=args.zero_shot_weights,
        save_models=args.save_models,
        compare_to=args.compare_to,
        correction=args.correction,
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        quiet=args.quiet,
        overwrite=args.overwrite,
    )


def _load_data(args: argparse.Namespace) -> list[Any]:
    from pathlib import Path

    from sgid.evaluate.data import attach_generated, load_folder_dataset
    from sgid.evaluate.datasets import load_dataset

    if args.dataset:
        from dataclasses import replace

        root = Path(args.data_root)
        datasets = [load_dataset(name.strip(), root) for name in args.dataset.split(",")]
        return [
            attach_generated(replace(d, folders=(("the --data-root folder", root),)), args.generated) for d in datasets
        ]
    return [load_folder_dataset(args.train, args.test, val=args.val, generated=args.generated, name=args.name)]


def run(args: argparse.Namespace) -> int:
    _check_sources(args)
    if args.export_train:
        from pathlib import Path

        from sgid.evaluate.data import export_image_folder

        if not args.dataset or "," in args.dataset:
            raise SgidError("--export-train writes the training split of one --dataset")
        data = _load_data(args)[0]
        count = export_image_folder(data.train, Path(args.export_train))
        print(f"wrote {count} training images of {data.name} to {args.export_train}")
        return 0
    config = _config(args)
    config.check(["generated", *_generated_names(args)])  # options first: a typo fails before any data is read
    if not args.dataset:
        _check_disjoint(args)
    from sgid.evaluate import evaluate

    result = evaluate(_load_data(args), config, args.out)
    if not args.quiet:
        table = (result.out / "results.md").read_text(encoding="utf-8").split("\n## ")[0]
        print(table.rstrip())
    return 0
