"""Generation: diffusers' img2img recipe with per-sample guidance."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import noise_image
from sgid.seeding import generator
from sgid.stages.generate import Img2ImgGenerator
from sgid.stages.prompt import PromptEncoder, build_prompt

STEPS, STRENGTH = 6, 0.7  # int(6 x 0.7) = 4 denoising steps; not 0.5, the default


@pytest.fixture(scope="module")
def inputs(img2img_pipe):  # type: ignore[no-untyped-def]
    encoder = PromptEncoder(img2img_pipe.tokenizer, img2img_pipe.text_encoder)
    prompts = [build_prompt("cat", "a cat on grass"), build_prompt("dog", "a dog"), build_prompt("car", "a red car")]
    images = [noise_image(i, (32, 32)) for i in range(3)]
    return images, encoder.encode(prompts, [(1.5, 0.9)] * 3), encoder.encode_texts([""] * 3)


def arrays(images):  # type: ignore[no-untyped-def]
    return [np.asarray(im).astype(int) for im in images]


def diffusers_call(pipe, images, embeds, negative, g, seeds):  # type: ignore[no-untyped-def]
    return pipe(
        image=images,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        strength=STRENGTH,
        num_inference_steps=STEPS,
        guidance_scale=g,
        generator=[generator(s) for s in seeds],
    ).images


def test_single_guidance_equals_diffusers_img2img(img2img_pipe, inputs) -> None:  # type: ignore[no-untyped-def]
    images, embeds, negative = inputs
    ours = Img2ImgGenerator(img2img_pipe)(
        images, embeds, negative, [3.0] * 3, strength=STRENGTH, steps=STEPS, seeds=[1, 2, 3]
    )
    theirs = diffusers_call(img2img_pipe, images, embeds, negative, 3.0, [1, 2, 3])
    for a, b in zip(arrays(ours.images), arrays(theirs), strict=True):
        assert np.array_equal(a, b)


def test_per_sample_guidance_equals_separate_calls(img2img_pipe, inputs) -> None:  # type: ignore[no-untyped-def]
    images, embeds, negative = inputs
    gen = Img2ImgGenerator(img2img_pipe)
    scales, seeds = [0.84, 1.24, 5.0], [1, 2, 3]
    batched = gen(images, embeds, negative, scales, strength=STRENGTH, steps=STEPS, seeds=seeds)
    for i in range(3):
        alone = gen(
            [images[i]],
            embeds[i : i + 1],
            negative[i : i + 1],
            [scales[i]],
            strength=STRENGTH,
            steps=STEPS,
            seeds=[seeds[i]],
        )
        difference = np.abs(arrays(batched.images)[i] - arrays(alone.images)[0])
        assert difference.max() <= 2  # batched CPU arithmetic differs from unbatched only in the last bits
        # ... and each image matches diffusers run at its own guidance (g > 1 only: see below)
        if scales[i] > 1:
            theirs = diffusers_call(
                img2img_pipe, [images[i]], embeds[i : i + 1], negative[i : i + 1], scales[i], [seeds[i]]
            )
            assert np.array_equal(arrays(alone.images)[0], arrays(theirs)[0])


def test_guidance_at_or_below_one_is_applied(img2img_pipe, inputs) -> None:  # type: ignore[no-untyped-def]
    """diffusers drops classifier-free guidance for g <= 1; SGID applies eps_u + g (eps_c - eps_u) anyway."""
    images, embeds, negative = inputs
    one = (images[:1], embeds[:1], negative[:1])
    ours = Img2ImgGenerator(img2img_pipe)(*one, [0.8], strength=STRENGTH, steps=STEPS, seeds=[4])
    compat = Img2ImgGenerator(img2img_pipe, diffusers_guidance=True)(
        *one, [0.8], strength=STRENGTH, steps=STEPS, seeds=[4]
    )
    theirs = diffusers_call(img2img_pipe, *one, 0.8, [4])
    assert np.array_equal(arrays(compat.images)[0], arrays(theirs)[0])
    assert not np.array_equal(arrays(ours.images)[0], arrays(theirs)[0])


def test_compat_mode_mixes_guided_and_unguided_samples(img2img_pipe, inputs) -> None:  # type: ignore[no-untyped-def]
    images, embeds, negative = inputs
    gen = Img2ImgGenerator(img2img_pipe, diffusers_guidance=True)
    batched = gen(images[:2], embeds[:2], negative[:2], [0.9, 2.0], strength=STRENGTH, steps=STEPS, seeds=[1, 2])
    for i, g in enumerate([0.9, 2.0]):
        theirs = diffusers_call(img2img_pipe, [images[i]], embeds[i : i + 1], negative[i : i + 1], g, [i + 1])
        assert np.abs(arrays(batched.images)[i] - arrays(theirs)[0]).max() <= 2


def test_seeds_make_results_reproducible(img2img_pipe, inputs) -> None:  # type: ignore[no-untyped-def]
    images, embeds, negative = inputs
    gen = Img2ImgGenerator(img2img_pipe)
    a = gen(images, embeds, negative, [1.2] * 3, strength=STRENGTH, steps=STEPS, seeds=[1, 2, 3])
    b = gen(images, embeds, negative, [1.2] * 3, strength=STRENGTH, steps=STEPS, seeds=[1, 2, 3])
    c = gen(images, embeds, negative, [1.2] * 3, strength=STRENGTH, steps=STEPS, seeds=[9, 2, 3])
    assert all(np.array_equal(x, y) for x, y in zip(arrays(a.images), arrays(b.images), strict=True))
    assert not np.array_equal(arrays(a.images)[0], arrays(c.images)[0])


def test_noise_rate_zero_runs_no_denoising(img2img_pipe, inputs) -> None:  # type: ignore[no-untyped-def]
    images, embeds, negative = inputs
    out = Img2ImgGenerator(img2img_pipe)(
        images[:1], embeds[:1], negative[:1], [2.0], strength=0.0, steps=STEPS, seeds=[1]
    )
    assert out.images[0].size == images[0].size and out.nsfw == [False]


def test_native_resolution(img2img_pipe) -> None:  # type: ignore[no-untyped-def]
    gen = Img2ImgGenerator(img2img_pipe)
    assert gen.resolution == 32 and gen.size_multiple == 2  # tiny model; SD 1.5 gives 512 and 8
