"""``sgid augment --dry-run``: what a run would do and how long it would take, with nothing written.

The counts come from the plan (every item's generator and size, the journal of what is done, the caption cache);
the time from one calibration batch run twice on the chosen device and engine (the first run loads the models
and warms up, the second is timed): seconds per caption × images to caption + seconds per image × images to make,
divided by the workers. That assumes the workers scale perfectly and the calibration batch is typical; it is an
estimate, labelled so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sgid.config import AugmentConfig

#: UNet evaluations per denoising step: classifier-free guidance doubles them; InstructPix2Pix's text and image
#: guidance triples them; retrieval generates nothing.
GUIDANCE_PASSES = {"img2img": 2, "text2img": 2, "instruct": 3, "retrieval": 0}
COMPARE_WORKERS = 8  # the estimate is also given for this many workers


def denoising_steps(kind: str, config: AugmentConfig) -> int:
    """Denoising steps per image of a generator kind (img2img runs int(steps × noise))."""
    if kind == "retrieval" or is_perturbation(kind):
        return 0  # copies of pool images, or a torchvision perturbation: no UNet
    return int(config.steps * config.noise) if kind == "img2img" else config.steps


def is_perturbation(kind: str) -> bool:
    """A torchvision perturbation (randaugment, random_erasing, cutmix): images made without a UNet."""
    from sgid.stages.perturb import IMAGE_PERTURBATIONS

    return kind in IMAGE_PERTURBATIONS


def guidance_passes(kind: str, config: AugmentConfig) -> int:
    """UNet evaluations per step; 1 where diffusers' rule turns guidance off for a constant g <= 1."""
    passes = GUIDANCE_PASSES.get(kind, 2)
    guidance = config.guidance_map
    if passes == 2 and config.diffusers_guidance and not guidance.needs_similarity and guidance(None) <= 1:
        return 1
    return passes


def duration(seconds: float) -> str:
    """``3 h 10 min``, ``25 min``, ``40 s``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


@dataclass(frozen=True)
class DryRun:
    """What ``sgid augment`` would do (``augment(..., dry_run=True)`` returns it; the CLI prints ``lines()``)."""

    input_dir: Path
    out_dir: Path
    engine: str  # e.g. "ray engine, 2 workers"
    workers: int
    device: str  # e.g. "cpu fp32"
    sources: int  # usable input images
    unusable: int  # inputs skipped or unreadable (errors.jsonl lists them when the run happens)
    images: int  # images the run makes in all (sources × multiplier)
    done: int  # already made by an earlier run
    to_make: int
    to_caption: int  # sources whose captions are not in the cache
    steps: int  # denoising steps per image
    passes: int  # UNet evaluations per step
    caption_seconds: float | None = None  # per image, from the calibration (None: nothing to caption)
    generation_seconds: float | None = None  # per image, from the calibration (None: nothing to generate)
    calibration: str = ""

    @property
    def unet_evaluations(self) -> int:
        return self.to_make * self.steps * self.passes

    def seconds_on(self, workers: int) -> float:
        one = (self.caption_seconds or 0.0) * self.to_caption + (self.generation_seconds or 0.0) * self.to_make
        return one / max(1, workers)

    @property
    def seconds(self) -> float | None:
        """The estimated time on the chosen engine, or None without a calibration."""
        if self.caption_seconds is None and self.generation_seconds is None:
            return None if self.to_make or self.to_caption else 0.0
        return self.seconds_on(self.workers)

    def lines(self) -> list[str]:
        lines = [
            f"dry run: sgid augment {self.input_dir} --out {self.out_dir} (nothing written)",
            f"inputs: {self.sources} usable, {self.unusable} unusable (listed in errors.jsonl by the run)",
            f"images: {self.images} in all; {self.to_make} images to make, {self.done} already done",
            f"captions: {self.to_caption} images to caption (the others from the cache or not needed)",
            f"{self.unet_evaluations:,} UNet evaluations ({self.to_make} images × {self.steps} denoising steps × "
            f"{self.passes} for guidance)"
            if self.steps
            else "no UNet evaluations (this method runs no diffusion model)",
        ]
        if self.calibration:
            lines.append(f"calibration on {self.engine}, {self.device}: {self.calibration}")
        if self.seconds is None:
            lines.append("estimated time: unknown (nothing could be calibrated)")
        else:
            here = f"estimated time: ≈ {duration(self.seconds)} here"
            if self.workers < COMPARE_WORKERS and self.seconds:
                here += f"; ≈ {duration(self.seconds_on(COMPARE_WORKERS))} on {COMPARE_WORKERS} workers"
            lines.append(here + " (if the calibration batch is typical and workers scale perfectly)")
        return lines
