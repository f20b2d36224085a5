"""Captioning batched across images (with per-image seeded nucleus sampling) vs one image per call.

python benchmarks/bench_captions.py
"""

from __future__ import annotations

import torch
from common import CPU, compare, images, report, tiny_models

from sgid.models.loading import load_captioner, load_scorer
from sgid.stages.caption import Captioner
from sgid.stages.score import ClipScorer

N = 8


def main() -> None:
    models = tiny_models()
    captioner = Captioner(*load_captioner(models.captioner, CPU, torch.float32))
    scorer = ClipScorer(*load_scorer(models.scorer, CPU, torch.float32))
    imgs = images(N)
    seeds = list(range(N))

    def batched() -> None:
        captions = captioner(imgs, seeds)
        scorer.caption_similarities(imgs, [[c.text for c in group] for group in captions])

    def one_by_one() -> None:
        for image, seed in zip(imgs, seeds, strict=True):
            captions = captioner([image], [seed])
            scorer.caption_similarities([image], [[c.text for c in group] for group in captions])

    slow, fast = compare(one_by_one, batched)
    report(f"BLIP 10+10 captions + CLIP scores, {N} images", "one image per call", slow, "one batched call", fast)


if __name__ == "__main__":
    main()
