"""Plant bugs one at a time in a copy of ``src/`` and run the tests that must catch them (docs/testing.md).

Not a test module: a script. ``python tests/plant_bugs.py [--list] [NAME ...]`` (from the repository root; default:
every plant) copies ``src/`` to a temporary folder, makes one edit there (an exact text replacement that must
match once, so a plant that no longer applies says so instead of passing silently), runs the named tests with
that copy first on ``PYTHONPATH`` (``-x``: the first failure is enough), and prints one line per plant: ``fails``
(what it should do, with the test that failed), ``PASSES`` (the tests missed the bug) or ``STALE`` (the code moved:
update the plant). ``--baseline`` first runs every named test
on the unchanged ``src/``, which must pass. The tiny models are shared with the test suite's cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPLAY = "tests/test_replay.py::test_every_image_replays_alone_from_its_manifest_row"
SEEDS = "tests/test_seeds.py::test_adding_removing_or_renaming_an_input_leaves_every_other_image_byte_identical"


@dataclass(frozen=True)
class Plant:
    name: str
    bug: str  # what the table in docs/testing.md says
    file: str  # under src/sgid/
    old: str
    new: str
    tests: tuple[str, ...]


def replay(*runs: str) -> tuple[str, ...]:
    return tuple(f"{REPLAY}[{run}]" for run in runs)


PLANTS = [
    # -- the three bugs of issue 14 --------------------------------------------------------------------------------
    Plant(
        "weights-swapped",
        "w_l and w_c swapped where the batch is encoded (`GenerateStage`)",
        "stages/bundle.py",
        "[(s.label_weight, s.caption_weight) for s in batch]",
        "[(s.caption_weight, s.label_weight) for s in batch]",
        replay("sgid", "sgid-sdxl", "sgid-canny"),
    ),
    Plant(
        "first-guidance",
        "every image of a batch generated with the first image's guidance",
        "stages/bundle.py",
        "guidance=[s.guidance_scale for s in batch]",
        "guidance=[batch[0].guidance_scale for s in batch]",
        replay("sgid", "sgid-sdxl", "sgid-canny"),
    ),
    Plant(
        "no-top-p",
        "nucleus top-p cut removed from the captioner",
        "stages/caption.py",
        "processors.append(TopPLogitsWarper(top_p=s.top_p))",
        "pass",
        ("tests/test_captions.py::test_nucleus_captions_never_sample_outside_the_top_p_mass",),
    ),
    # -- batch paths: strength, steps, seeds, latents, guidance -----------------------------------------------------
    Plant(
        "batch-strength",
        "batch strength hard-coded to 0.5",
        "stages/bundle.py",
        "strength=batch[0].strength,",
        "strength=None if batch[0].strength is None else 0.5,",
        replay("sgid"),
    ),
    Plant(
        "batch-steps",
        "batch steps + 1",
        "stages/bundle.py",
        "steps=self.steps,",
        "steps=self.steps + 1,",
        replay("sgid"),
    ),
    Plant(
        "batch-seeds",
        "batch seeds from the first",
        "stages/bundle.py",
        "seeds=[s.seed for s in batch],",
        "seeds=[batch[0].seed for s in batch],",
        replay("sgid"),
    ),
    Plant(
        "img2img-latents",
        "img2img latents from the first generator",
        "backends/base.py",
        "pipe.prepare_latents(image, latent_timestep, batch, 1, dtype, device, generators)",
        "pipe.prepare_latents(image, latent_timestep, batch, 1, dtype, device, [generators[0]] * batch)",
        replay("sgid", "sgid-sdxl"),
    ),
    Plant(
        "denoise-first-g",
        "denoising with the first g",
        "backends/base.py",
        "torch.tensor([float(g) for g in guidance]),",
        "torch.tensor([float(guidance[0]) for g in guidance]),",
        replay("sgid", "sgid-sdxl", "sgid-canny"),
    ),
    Plant(
        "text2img-latents",
        "text2img latents from the first seed",
        "backends/base.py",
        "generators = [generator(seed) for seed in r.seeds]\n        # 3. Prompt embeddings come encoded from",
        "generators = [generator(r.seeds[0]) for seed in r.seeds]\n        # 3. Prompt embeddings come encoded from",
        replay("text2img"),
    ),
    Plant(
        "pix2pix-seeds",
        "InstructPix2Pix generators from the first seed",
        "backends/instruct.py",
        "generator=[generator(seed) for seed in r.seeds],",
        "generator=[generator(r.seeds[0]) for seed in r.seeds],",
        replay("instruct_pix2pix"),
    ),
    Plant(
        "sdxl-pooled",
        "SDXL pooled embeddings of the first prompt for the whole batch",
        "backends/sdxl.py",
        "pooled = encoders[-1].pooled_texts([p.text for p in prompts])",
        "pooled = encoders[-1].pooled_texts([prompts[0].text for p in prompts])",
        replay("sgid-sdxl"),
    ),
    Plant(
        "img2img-first-source",
        "img2img: every image of a batch made from the first source's pixels",
        "backends/base.py",
        "image = pipe.image_processor.preprocess(list(r.images))",
        "image = pipe.image_processor.preprocess([r.images[0]] * batch)",
        replay("sgid", "sgid-sdxl"),
    ),
    Plant(
        "pix2pix-first-source",
        "InstructPix2Pix: every image of a batch edited from the first source",
        "backends/instruct.py",
        "image=list(r.images),",
        "image=[r.images[0]] * len(r.images),",
        replay("instruct_pix2pix"),
    ),
    Plant(
        "control-first-image",
        "ControlNet condition image of the first source for the whole batch",
        "stages/bundle.py",
        "else self.control(pixels),",
        "else self.control([pixels[0]] * len(pixels)),",
        replay("sgid-canny"),
    ),
    # -- the generator classes (the replay shares them): compared with diffusers' pipelines -----------------------
    Plant(
        "img2img-noise-0.5",
        "img2img generator ignores the noise rate (0.5)",
        "backends/base.py",
        "timesteps, _ = pipe.get_timesteps(r.steps, r.strength, device)",
        "timesteps, _ = pipe.get_timesteps(r.steps, 0.5, device)",
        ("tests/test_generate.py::test_single_guidance_equals_diffusers_img2img",),
    ),
    Plant(
        "img2img-step-more",
        "img2img generator runs one step more",
        "backends/base.py",
        "timesteps, _ = pipe.get_timesteps(r.steps, r.strength, device)",
        "timesteps, _ = pipe.get_timesteps(r.steps, r.strength, device)\n"
        "        timesteps = pipe.scheduler.timesteps[-(len(timesteps) + 1) :]",
        ("tests/test_generate.py::test_single_guidance_equals_diffusers_img2img",),
    ),
    Plant(
        "pix2pix-image-guidance",
        "InstructPix2Pix generator ignores the image guidance",
        "backends/instruct.py",
        "image_guidance_scale=self.image_guidance,",
        "image_guidance_scale=1.5,",
        ("tests/test_methods.py::test_instruct_pix2pix_generator_equals_diffusers_pipeline",),
    ),
    Plant(
        "text2img-first-g",
        "text2img generator uses the first g (+1)",
        "backends/base.py",
        "latents = self.denoise(latents, pipe.scheduler.timesteps, conditioning, r.guidance, extra_step_kwargs, [])",
        "latents = self.denoise(latents, pipe.scheduler.timesteps, conditioning, [r.guidance[0] + 1] * "
        "len(r.guidance), extra_step_kwargs, [])",
        ("tests/test_methods.py::test_text2img_generator_equals_diffusers_pipeline",),
    ),
    # -- what the methods plan -------------------------------------------------------------------------------------
    Plant(
        "sgid-noise-0.5",
        "SGID plans noise 0.5 instead of `--noise`",
        "methods/sgid.py",
        'return self.prompted(sample, prompt, guidance, "img2img", caption=caption, strength=c.noise)',
        'return self.prompted(sample, prompt, guidance, "img2img", caption=caption, strength=0.5)',
        ("tests/test_replay.py::test_the_runs_use_settings_far_apart",),
    ),
    Plant(
        "boomerang-noise-0.5",
        "Boomerang's default noise replaced by 0.5",
        "methods/boomerang.py",
        'defaults = {"noise": 0.2,',
        'defaults = {"noise": 0.5,',
        ("tests/test_methods.py::test_boomerang",),
    ),
    Plant(
        "sgid-weights-swapped",
        "the methods plan (w_c, w_l)",
        "methods/base.py",
        "label_weight, caption_weight = self.config.weights",
        "caption_weight, label_weight = self.config.weights",
        ("tests/test_augment.py::test_outputs_and_manifest",),
    ),
    Plant(
        "encoder-label-wc",
        "the encoder multiplies label rows by w_c",
        "stages/prompt.py",
        "weights[position] = label_weight",
        "weights[position] = caption_weight",
        ("tests/test_prompt.py::test_weighting_scales_exactly_label_and_caption_rows",),
    ),
    # -- decoding settings -----------------------------------------------------------------------------------------
    Plant(
        "top-k-ignored",
        "top_k ignored",
        "stages/caption.py",
        "if s.top_k:",
        "if False:",
        ("tests/test_captions.py::test_top_k_cuts_before_the_nucleus",),
    ),
    Plant(
        "repetition-not-passed",
        "repetition penalty not passed",
        "stages/caption.py",
        "repetition_penalty=s.repetition_penalty,",
        "",
        ("tests/test_captions.py::test_repetition_penalty_changes_the_captions",),
    ),
    Plant(
        "min-length-not-passed",
        "min_length not passed",
        "stages/caption.py",
        "min_length=s.min_length,",
        "",
        ("tests/test_captions.py::test_min_and_max_length_bound_every_caption",),
    ),
    Plant(
        "max-length-not-passed",
        "max_length not passed",
        "stages/caption.py",
        "max_length=s.max_length,",
        "",
        ("tests/test_captions.py::test_min_and_max_length_bound_every_caption",),
    ),
    Plant(
        "num-beams-from-count",
        "num_beams taken from the caption count",
        "stages/caption.py",
        "num_beams=s.num_beams,",
        "num_beams=s.beam_captions,",
        ("tests/test_captions.py::test_beam_count_changes_the_beam_captions",),
    ),
    Plant(
        "nucleus-first-seed",
        "nucleus seeds from the first image of the batch",
        "stages/caption.py",
        "for seed in seeds for j in range(n)]",
        "for seed in [seeds[0]] * len(seeds) for j in range(n)]",
        ("tests/test_captions.py::test_captions_do_not_depend_on_the_batch",),
    ),
    Plant(
        "cache-key-top-k",
        "caption cache key without top_k",
        "pipeline.py",
        "settings=vars(c.captions),",
        'settings={k: v for k, v in vars(c.captions).items() if k != "top_k"},',
        ("tests/test_augment.py::test_every_decoding_setting_reaches_the_captioner_past_the_cache",),
    ),
    # -- filter thresholds -----------------------------------------------------------------------------------------
    Plant(
        "rule-threshold",
        "threshold rule at t − 0.005",
        "filters/rules.py",
        "(scores < threshold)",
        "(scores < threshold - 0.005)",
        ("tests/test_filters_rules.py",),
    ),
    Plant(
        "rule-mean",
        "per-label mean − 0.01",
        "filters/rules.py",
        "score < means[group]",
        "score < means[group] - 0.01",
        ("tests/test_filters_rules.py",),
    ),
    Plant(
        "rule-confidence-strict",
        "confidence `>`",
        "filters/rules.py",
        "(top_prob >= threshold)",
        "(top_prob > threshold)",
        ("tests/test_filters_rules.py",),
    ),
    Plant(
        "rule-confidence-plus",
        "confidence + 0.01",
        "filters/rules.py",
        "(top_prob >= threshold)",
        "(top_prob >= threshold + 0.01)",
        ("tests/test_filters_rules.py",),
    ),
    Plant(
        "threshold-filter",
        "threshold filter at its threshold + 0.01",
        "filters/clip.py",
        '"threshold", "similarity to the source", scores, self.threshold, active',
        '"threshold", "similarity to the source", scores, self.threshold + 0.01, active',
        ("tests/test_filters.py",),
    ),
    Plant(
        "realfake-filter",
        "realfake filter at its threshold + 0.01",
        "filters/realfake.py",
        '"realfake", "out-of-fold P(real)", scores, self.threshold, active',
        '"realfake", "out-of-fold P(real)", scores, self.threshold + 0.01, active',
        ("tests/test_filters.py",),
    ),
    Plant(
        "confidence-filter",
        "confidence filter at its threshold + 0.01",
        "filters/confidence.py",
        "self.threshold, active)",
        "self.threshold + 0.01, active)",
        ("tests/test_filters.py",),
    ),
    # -- mixing proportions ----------------------------------------------------------------------------------------
    Plant(
        "add-truncated",
        "mixing: add counts truncated instead of rounded half up",
        "evaluate/mixing.py",
        "round_half_up(p * len(group))",
        "int(p * len(group))",
        ("tests/test_evaluate_mixing.py",),
    ),
    Plant(
        "replace-truncated",
        "mixing: replace counts truncated instead of rounded half up",
        "evaluate/mixing.py",
        "count = round_half_up(proportion * len(group))",
        "count = int(proportion * len(group))",
        ("tests/test_evaluate_mixing.py",),
    ),
    Plant(
        "swap-rate",
        "swap probability + 0.02",
        "evaluate/mixing.py",
        "rng.random() < probability",
        "rng.random() < probability + 0.02",
        ("tests/test_evaluate_mixing.py::test_swap_draws_generated_images_at_rate_p",),
    ),
    Plant(
        "swap-plan-rate",
        "swap: the plan's probability + 0.02",
        "evaluate/mixing.py",
        "swap_probability=proportion)",
        "swap_probability=proportion + 0.02)",
        ("tests/test_evaluate_mixing.py",),
    ),
    # -- seeds per item --------------------------------------------------------------------------------------------
    Plant(
        "generation-seed-no-k",
        "generation seed without k",
        "pipeline.py",
        "derive_seed(c.seed, slot.source.relpath, slot.k, self.method.name, ",
        "derive_seed(c.seed, slot.source.relpath, self.method.name, ",
        ("tests/test_seeds.py::test_each_k_of_a_source_has_its_own_seed_and_image",),
    ),
    Plant(
        "generation-seed-position",
        "generation seed from the source's position instead of its path",
        "pipeline.py",
        "derive_seed(c.seed, slot.source.relpath, slot.k, self.method.name, ",
        "derive_seed(c.seed, sorted(context.infos).index(slot.source.relpath), slot.k, self.method.name, ",
        (SEEDS,),
    ),
    Plant(
        "caption-seed-position",
        "caption seed from the source's position instead of its path",
        "pipeline.py",
        'seeds = {s.relpath: derive_seed(c.seed, s.relpath, "captions") for s, _ in loaded}',
        'seeds = {s.relpath: derive_seed(c.seed, i, "captions") for i, (s, _) in enumerate(loaded)}',
        (SEEDS,),
    ),
    Plant(
        "caption-pick-no-k",
        "caption pick seed without k",
        "methods/sgid.py",
        'derive_seed(self.config.seed, sample.source.relpath, sample.k, "caption")',
        'derive_seed(self.config.seed, sample.source.relpath, "caption")',
        ("tests/test_replay.py::test_the_runs_use_settings_far_apart",),
    ),
    # -- evaluation ------------------------------------------------------------------------------------------------
    Plant(
        "lr-search-redone",
        "learning-rate search redone on resume",
        "evaluate/api.py",
        "if found is not None and ",
        "if False and found is not None and ",
        ("tests/test_evaluate_cli.py::test_a_resumed_sweep_does_not_redo_its_learning_rate_search",),
    ),
    Plant(
        "transforms-unseeded",
        "random transforms not seeded per draw (results depend on `--workers`)",
        "evaluate/train.py",
        "with global_rngs(draw_seed(self.seed, self.epoch, index)):",
        "if True:",
        ("tests/test_evaluate_cli.py::test_worker_processes_do_not_change_the_results",),
    ),
]


def failures(report: Path) -> tuple[list[str], int]:
    """(failed or errored test ids, tests run) from a junit XML report."""
    failed, ran = [], 0
    for case in ElementTree.parse(report).iter("testcase"):
        if case.find("skipped") is not None:
            continue
        ran += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    return failed, ran


def run_tests(src: Path, tests: tuple[str, ...], work: Path) -> tuple[list[str], int, int]:
    """(failed test ids, tests run, exit code) of pytest over ``tests`` with ``src`` first on the path."""
    report = work / "report.xml"
    report.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if not report.exists():
        raise SystemExit(
            f"pytest wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    failed, ran = failures(report)
    return failed, ran, done.returncode


def plant(plant: Plant, work: Path) -> str:
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    path = src / "sgid" / plant.file
    text = path.read_text()
    if text.count(plant.old) != 1:
        return f"STALE  {plant.name}: {plant.old!r} occurs {text.count(plant.old)} times in {plant.file}"
    path.write_text(text.replace(plant.old, plant.new))
    start = time.monotonic()
    failed, ran, code = run_tests(src, plant.tests, work)
    took = time.monotonic() - start
    verdict = "fails " if failed else "PASSES"
    caught = ", ".join(f.split("::", 1)[1] if "::" in f else f for f in failed) or "-"
    return f"{verdict} {plant.name} ({ran} tests, {took:.0f} s; exit {code}): {caught}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="plants to try (default: all)")
    parser.add_argument("--list", action="store_true", help="list the plants and exit")
    parser.add_argument("--baseline", action="store_true", help="first run every named test on the unchanged src/")
    args = parser.parse_args(argv)
    if args.list:
        for p in PLANTS:
            print(f"{p.name:28} {p.bug}")
        return 0
    by_name = {p.name: p for p in PLANTS}
    unknown = set(args.names) - set(by_name)
    if unknown:
        parser.error(f"unknown plants: {', '.join(sorted(unknown))}")
    chosen = [by_name[name] for name in args.names] if args.names else PLANTS  # in the order given
    with tempfile.TemporaryDirectory(prefix="sgid-plants-") as folder:
        work = Path(folder)
        if args.baseline:
            tests = tuple(dict.fromkeys(t for p in chosen for t in p.tests))
            failed, ran, code = run_tests(ROOT / "src", tests, work)
            print(f"baseline: {ran} tests, exit {code}, failed: {', '.join(failed) or 'none'}", flush=True)
            if failed:
                return 1
        outcomes = []
        for p in chosen:
            outcomes.append(plant(p, work))
            print(outcomes[-1], flush=True)
    return 0 if all(line.startswith("fails") for line in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
