"""Does a perturbation augmentation help a small CNN learn digits from 10 images per class? An offline experiment.

scikit-learn's bundled digits (1,797 8×8 grayscale images, no download) are upscaled to 32×32 RGB and split once,
stratified, into a training pool and a test set of equal size. Every seed draws its own 10-shot subset of the
pool (the same subset for every method at that seed), and ``small_cnn`` is trained from scratch with the basic
transforms (pad 4 + random crop, horizontal flip) alone — the baseline — and with each perturbation baseline of
the SGID paper at its settings: Random Erasing, CutMix, RandAugment, MoEx. Five seeds, paired t-tests against the
baseline, through the same Python API as ``sgid evaluate``.

Run (6 min 15 s measured on 2 shared CPU cores, 31 min on a busier one: docs/experiments/digits.md; resumes if
interrupted)::

    python experiments/digits.py --out experiments/out/digits

It writes OUT/results.md, OUT/results.json and OUT/plots/ and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sgid.evaluate import EvalConfig, EvalData, Example, evaluate
from sgid.evaluate.data import ArrayImage, stratified_split

METHODS = ("baseline", "random_erasing", "cutmix", "randaugment", "moex")
SPLIT_SEED = 0


def digits_dataset(size: int = 32) -> EvalData:
    """The digits as 32×32 RGB examples, split 50/50 (stratified, fixed seed) into a training pool and a test set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    classes = tuple(str(i) for i in range(10))
    examples = []
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        gray = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), "L")
        rgb = np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR).convert("RGB"))
        examples.append(Example(key=f"{label}/{index:04d}.png", label=int(label), load=ArrayImage(rgb)))
    pool, test = stratified_split(examples, 0.5, SPLIT_SEED)
    return EvalData("digits", classes, pool, test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="experiments/out/digits", help="output folder [default: %(default)s]")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None, help="[default: small_cnn's recipe]")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads [default: 1, as the documented results were made]",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = digits_dataset()
    config = EvalConfig(
        methods=tuple(args.methods.split(",")),
        backbone="small_cnn",
        seeds=args.seeds,
        shots=args.shots,
        epochs=args.epochs,
        threads=args.threads,
        device="cpu",
        quiet=args.quiet,
    )
    result = evaluate(data, config, Path(args.out))
    print((result.out / "results.md").read_text(encoding="utf-8"))
    print(
        f"{result.trained} runs trained, {result.reused} reused, {time.perf_counter() - started:.0f}s in total",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
