"""Per-sample guidance in one batch vs one pipeline call per image (what a scalar-guidance pipeline forces).

python benchmarks/bench_generation.py
"""

from __future__ import annotations

import torch
from common import CPU, compare, images, report, tiny_models

from sgid.models.loading import load_sd_pipeline
from sgid.stages.generate import Img2ImgGenerator
from sgid.stages.prompt import PromptEncoder, build_prompt

N, STEPS = 8, 20


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = load_sd_pipeline(tiny_models().generator, "img2img", CPU, torch.float32, False)
    encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
    imgs = images(N)
    embeds = encoder.encode([build_prompt("cat", f"caption {i}") for i in range(N)], [(1.5, 0.9)] * N)
    negative = encoder.encode_texts([""] * N)
    scales = [0.8 + 0.1 * i for i in range(N)]  # a different g for every image
    gen = Img2ImgGenerator(pipe)

    def batched() -> None:
        gen(imgs, embeds, negative, scales, strength=0.5, steps=STEPS, seeds=list(range(N)))

    def one_by_one() -> None:
        for i in range(N):
            gen([imgs[i]], embeds[i : i + 1], negative[i : i + 1], [scales[i]], strength=0.5, steps=STEPS, seeds=[i])

    slow, fast = compare(one_by_one, batched)
    report(f"img2img, {N} images with {N} guidance scales", "one call per image", slow, "one batched call", fast)


if __name__ == "__main__":
    main()
