"""One small ``sgid augment`` run per registered method (and a chain), made at batch size 2 with settings chosen so
that every ingredient of a generation moves pixels far beyond batched-arithmetic rounding, and the tools to check
such a run image by image: replaying a manifest row alone through the public stage classes, and snapshots.

Guidance: the paper's f(s) maps the tiny CLIP's similarities (about -0.05 to 0.15) to g ≈ 0.95–1.2, where a wrong
g changes pixels by a level at most. :func:`spread_guidance` swaps in, for the test only, a map that sends every
similarity to 0.8, 3 or 7 (by the similarity's seventh decimal, so it stays a pure function of s: resumed runs and
replays see the same g). With ``--caption nucleus`` the two augmentations of an image have different captions and
similarities, so batches mix guidance scales. Weights are w_l = 3, w_c = 0.2. Besides the methods, SGID runs on the
SDXL backend and guided by a canny ControlNet (:data:`VARIANTS`), replayed through their backend classes.
"""

from __future__ import annotations

import json
import os
import signal
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder, one_thread
from sgid.images import load_rgb, resize
from sgid.methods import METHODS
from sgid.runstore import KILL_AFTER_ROWS
from sgid.stages.guidance import GuidanceMap
from sgid.stages.perturb import IMAGE_PERTURBATIONS
from sgid.stages.prompt import Prompt, PromptEncoder, build_prompt

#: Batched CPU arithmetic differs from unbatched in the last bits (docs/augment.md: "within two levels").
MAX_LEVELS = 2
#: ... on a handful of pixels: the mean absolute difference stays far below what any wrong setting gives.
MAX_MEAN_LEVELS = 0.05
SPREAD = (0.8, 3.0, 7.0)
WEIGHTS = {"label_weight": 3.0, "caption_weight": 0.2}
BATCH = 2
COMMON: dict[str, Any] = {"models": "tiny", "multiplier": 2, "batch_size": BATCH, "quiet": True, **WEIGHTS}

#: Per method: settings far from each other's defaults, so a wrong noise rate or step count shows.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "sgid": {"steps": 10, "noise": 0.7, "caption": "nucleus"},
    "diverse_caption": {"steps": 10, "noise": 0.7, "caption": "nucleus"},
    "text2img": {"steps": 5, "guidance": 5.0, "prompt_weighting": True},
    "boomerang": {"steps": 10, "noise": 0.3, "boomerang_prompt": "label", "guidance": 4.0},
    # in batches of four, so that a batch holds two sources (InstructPix2Pix takes its images in its own call)
    "instruct_pix2pix": {"steps": 4, "guidance": 5.0, "image_guidance": 2.0, "batch_size": 4},
    "retrieval": {"duplicate_threshold": 0.99999},
    "randaugment": {},
    "random_erasing": {},
    "cutmix": {},
    "text2img+sgid": {"steps": 6, "noise": 0.7, "caption": "nucleus"},
}
#: The other generator backends and ControlNet guidance: SGID with its settings above (the same far-apart guidance
#: and weights), on SDXL (two text encoders, pooled embeddings, size conditioning) and guided by canny edges. In
#: batches of four, so that a batch holds two sources (at batch size 2 both images of a batch come from one source,
#: and a per-source input taken from the first image, such as its condition image, would go unseen).
VARIANTS: dict[str, dict[str, Any]] = {
    "sgid-sdxl": {**METHOD_OPTIONS["sgid"], "method": "sgid", "backend": "sdxl", "batch_size": 4},
    "sgid-canny": {
        **METHOD_OPTIONS["sgid"],
        "method": "sgid",
        "control": "canny",
        "control_scale": 0.9,
        "batch_size": 4,
    },
}


class SpreadGuidance(GuidanceMap):
    """Test-only guidance map: 0.8, 3 or 7, chosen by the similarity's seventh decimal."""

    def raw(self, similarity: float | None) -> float:
        if similarity is None:
            raise ValueError("the similarity-based guidance map needs a similarity")
        return SPREAD[int(abs(similarity) * 1e7) % len(SPREAD)]

    def describe(self) -> str:
        return "test: 0.8, 3 or 7 by the similarity's seventh decimal"


@contextmanager
def spread_guidance() -> Iterator[None]:
    """``--guidance paper`` means :class:`SpreadGuidance` inside this block (constants are left alone)."""
    import sgid.config

    real = sgid.config.parse_guidance
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            sgid.config, "parse_guidance", lambda v, *floor: SpreadGuidance() if v == "paper" else real(v, *floor)
        )
        yield


class MethodRuns:
    """The inputs (two classes of two 40x32 images, the tiny model's generation size for them, so images are
    compared as generated; a pool of twelve for retrieval) and one reference run per method, made on first use."""

    def __init__(self, root: Path, cache_dir: Path) -> None:
        self.root = root
        self.cache_dir = cache_dir
        self.source = make_image_folder(root / "in", {"cat": 2, "dog": 2}, size=(40, 32))
        self.pool = make_image_folder(root / "pool", {"x": 12}, size=(20, 20), seed=9)
        self._made: dict[str, Path] = {}

    def options(self, method: str) -> dict[str, Any]:
        """The augment options of run ``method``: a method (or chain) of METHOD_OPTIONS, or a name of VARIANTS."""
        chosen = {"method": method, **METHOD_OPTIONS[method]} if method in METHOD_OPTIONS else VARIANTS[method]
        options = {**COMMON, **chosen, "cache_dir": self.cache_dir}
        if method == "retrieval":
            options["pool"] = self.pool
        return options

    def augment(self, method: str, out: Path) -> Any:
        from sgid.pipeline import augment

        with spread_guidance(), one_thread():  # as in the forked child of run_killed, whatever the machine
            return augment(self.source, out, **self.options(method))

    def reference(self, method: str) -> Path:
        """The uninterrupted run of ``method`` (OUT is ``<root>/reference-<method>/out``)."""
        if method not in self._made:
            out = self.root / f"reference-{method}" / "out"
            self.augment(method, out)
            self._made[method] = out
        return self._made[method]


def run_killed(function, *args: Any, after: int, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
    """Call ``function`` in a forked child with ``SGID_TEST_KILL_AFTER_ROWS=after``; require that it was SIGKILLed.

    The child inherits the loaded models, so no time goes into imports. It computes with one thread: OpenMP
    thread pools do not survive ``fork`` (this is what PyTorch's DataLoader workers do too).
    """
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            torch.set_num_threads(1)
            os.environ[KILL_AFTER_ROWS] = str(after)
            function(*args, **kwargs)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the run was not killed after {after} journal rows (exit status {status}): the test would prove nothing"
    )


# -- reading runs ------------------------------------------------------------------------------------------
def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def snapshot(out: Path) -> dict[str, bytes]:
    """Every user-visible file, with the folder holding OUT written as ``<root>`` (chained runs record their
    parent's path); run.json without what names the invocation or only affects execution."""
    root = str(out.parent.resolve()).encode()
    result = {
        p.relative_to(out).as_posix(): p.read_bytes().replace(root, b"<root>")
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }
    run = json.loads(result.pop("run.json"))
    run.pop("command", None)
    for section in (run["config"], run["identity"]):
        for execution_only in ("out_dir", "cache_dir", "caption_cache", "batch_size"):
            section.pop(execution_only, None)
    run.pop("identity_sha256")
    result["run.json"] = json.dumps(run, sort_keys=True).encode()
    return result


def assert_same_run(got: Path, expected: Path) -> None:
    """Every file byte for byte: manifests, errors, run settings and images (at one batch size, a resumed run
    remakes a partly done batch whole, so its images are the same bytes)."""
    a, b = snapshot(got), snapshot(expected)
    assert a.keys() == b.keys()
    assert len([k for k in a if k.endswith(".png")]) >= 6, "too few images: the comparison would prove little"
    for name in a:
        if name.endswith(".png") and a[name] != b[name]:
            assert_close(pixels(got / name), pixels(expected / name), name)  # says by how much
        assert a[name] == b[name], name


def assert_close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert got.shape == expected.shape, what
    difference = np.abs(got - expected)
    assert difference.max() <= MAX_LEVELS and difference.mean() <= MAX_MEAN_LEVELS, (
        f"{what}: differs by up to {difference.max()} levels, {difference.mean():.3f} on average"
    )


# -- replaying one manifest row alone ----------------------------------------------------------------------
class Replayer:
    """Regenerates one image from its manifest row alone (batch of one), through the public stage classes:
    ``PromptEncoder``, ``Img2ImgGenerator``, ``Text2ImgGenerator``, ``InstructPix2PixGenerator``; SDXL and
    ControlNet-guided rows through their backend (``StableDiffusionXL``, ``ControlNetGuide``, ``Canny``)."""

    def __init__(self, tiny) -> None:  # type: ignore[no-untyped-def]
        self.tiny = tiny

    def pipe(self, kind: str):  # type: ignore[no-untyped-def]
        from sgid.models.loading import load_sd_pipeline

        ref = self.tiny.instruct if kind == "instruct" else self.tiny.generator
        return load_sd_pipeline(ref, kind, torch.device("cpu"), torch.float32, False)

    def __call__(self, row: dict[str, Any], run_dir: Path, **changes: Any) -> np.ndarray:
        """The image of ``row`` (at its saved size), with any field of the row replaced by ``changes``."""
        from sgid.stages.generate import Img2ImgGenerator, InstructPix2PixGenerator, Text2ImgGenerator

        row = {**row, **changes}
        config = json.loads((run_dir / "run.json").read_text())["config"]
        kinds = METHODS.get(row["method"]).generator_kinds
        if not kinds:  # copies (retrieval): the pool image itself
            return np.asarray(load_rgb(Path(config["pool"]) / row["pool_path"]).image, dtype=np.int16)
        kind = kinds[0]
        if kind in IMAGE_PERTURBATIONS:
            source = self.source(row, config)
            if not row["perturbation_applied"]:
                return np.asarray(source, dtype=np.int16)
            partner = load_rgb(Path(config["input_dir"]) / row["partner"]).image if row.get("partner") else None
            made = IMAGE_PERTURBATIONS.get(kind)().apply(source, row["perturbation_params"], partner)
            return np.asarray(made, dtype=np.int16)
        size = (row["generation_width"], row["generation_height"])
        prompt = self.prompt(row, kind, config["label_template"])
        if kind == "img2img" and (row["backend"] != "sd" or row.get("control")):
            return self.finish(self.through_backend(row, config, prompt, size), row)
        pipe = self.pipe(kind)
        encoder = PromptEncoder(pipe.tokenizer, pipe.text_encoder)
        embeds = encoder.encode([prompt], [(row["label_weight"], row["caption_weight"])])
        negative = encoder.encode_texts([row["negative_prompt"]])
        common = {"steps": row["steps"], "seeds": [row["seed"]]}
        if kind == "text2img":
            generator = Text2ImgGenerator(pipe, diffusers_guidance=row["diffusers_guidance"])
            output = generator(None, embeds, negative, [row["guidance_scale"]], strength=None, size=size, **common)
        elif kind == "instruct":
            generator = InstructPix2PixGenerator(pipe, image_guidance=row["image_guidance_scale"])
            image = [resize(self.source(row, config), size)]
            output = generator(image, embeds, negative, [row["text_guidance_scale"]], strength=None, **common)
        else:
            generator = Img2ImgGenerator(pipe, diffusers_guidance=row["diffusers_guidance"])
            image = [resize(self.source(row, config), size)]
            output = generator(image, embeds, negative, [row["guidance_scale"]], strength=row["noise_rate"], **common)
        return self.finish(output.images[0], row)

    @staticmethod
    def finish(made: Image.Image, row: dict[str, Any]) -> np.ndarray:
        """The generated image at the row's saved size, as levels."""
        if made.size != (row["width"], row["height"]):
            made = resize(made, (row["width"], row["height"]))
        return np.asarray(made, dtype=np.int16)

    def ref(self, name: str):  # type: ignore[no-untyped-def]
        """The tiny model ``tiny:<component>`` a row names (it lies beside the tiny generator)."""
        from sgid.models.loading import ModelRef

        assert name.startswith("tiny:"), name
        return ModelRef(name, str(Path(self.tiny.generator.path).parent / name.split(":", 1)[1]))

    def through_backend(
        self, row: dict[str, Any], config: dict[str, Any], prompt: Prompt, size: tuple[int, int]
    ) -> Image.Image:
        """Image-to-image on another backend (SDXL: two encoders, pooled embeddings, size conditioning) or guided
        by a ControlNet: the row's backend class itself encodes and generates, one image alone; the condition
        image is computed again from the source at the generation size, with the row's kind and thresholds."""
        from sgid.backends import BACKENDS, GenerationRequest
        from sgid.backends.controlnet import ControlNetGuide
        from sgid.models.loading import load_controlnet, load_sd_pipeline
        from sgid.stages.control import Canny

        family = BACKENDS.get(row["backend"])
        cpu, fp32 = torch.device("cpu"), torch.float32
        pipe = load_sd_pipeline(self.ref(row["generator_model"]), "img2img", cpu, fp32, False, backend=family.name)
        guide, condition = None, None
        image = [resize(self.source(row, config), size)]
        if row.get("control"):
            assert row["control"]["kind"] == "canny", "the replay computes canny edges only"
            controlnet = load_controlnet(self.ref(row["controlnet_model"]), cpu, fp32)
            guide = ControlNetGuide(controlnet, row["control_scale"], row["controlnet_model"])
            condition = Canny(row["control"]["low_threshold"], row["control"]["high_threshold"])(image)
        backend = family(
            pipe, "img2img", diffusers_guidance=row["diffusers_guidance"], guide=guide, weighting=config["weighting"]
        )
        weights = [(row["label_weight"], row["caption_weight"])]
        conditioning = backend.encode([prompt], weights, [row["negative_prompt"]])
        request = GenerationRequest(
            image,
            conditioning,
            [row["guidance_scale"]],
            row["noise_rate"],
            row["steps"],
            [row["seed"]],
            size,
            condition,
        )
        return backend.generate(request).images[0]

    @staticmethod
    def source(row: dict[str, Any], config: dict[str, Any]) -> Image.Image:
        """The image this one was made from: the real source, or the earlier run's image for a chained method."""
        if row.get("parent"):
            return load_rgb(Path(row["parent_run"]) / row["parent"]).image
        return load_rgb(Path(config["input_dir"]) / row["source"]).image

    @staticmethod
    def prompt(row: dict[str, Any], kind: str, template: str) -> Prompt:
        """The prompt with its label and caption parts, rebuilt from the row's fields (and checked against it)."""
        if kind == "text2img":  # the whole sentence counts as the label part
            prompt = Prompt(row["prompt"], (0, len(row["prompt"])), (0, 0))
        elif kind == "instruct":
            prompt = Prompt(row["instruction"], (0, 0), (0, 0))
        else:
            mode = row["prompt_mode"] or ("label" if row.get("boomerang_prompt") == "label" else "none")
            prompt = build_prompt(row["label_text"], row["caption"], mode, template)
        assert prompt.text == row["prompt"]
        return prompt
