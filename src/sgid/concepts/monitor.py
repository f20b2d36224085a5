"""What a LoRA run shows while it trains: the loss log, the loss curve, and sample images per class.

Written at every checkpoint and at the end, each file atomically:

- ``loss.csv``: ``step,loss,instance_loss,prior_loss`` for every step so far (``prior_loss`` empty without prior
  preservation). The history travels in the checkpoint, so a resumed run's log equals an uninterrupted one's;
- ``loss.png``: the loss per step and its moving average;
- ``samples/step-000100/<class>-0.png ...``: ``samples_per_class`` images per class from the prompt
  ``"a photo of a <sgid-cat> cat"``, each with the same seed at every checkpoint, so the folders show how the
  same images change as training goes on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sgid.concepts.lora import LoraSettings
from sgid.concepts.prior import CLASS_PROMPT, render_to
from sgid.concepts.store import ConceptsDir
from sgid.concepts.trainer import DiffusionParts
from sgid.errors import require
from sgid.runstore import figure_png
from sgid.seeding import derive_seed

LOSS_LOG = "loss.csv"
LOSS_PLOT = "loss.png"
SAMPLES_DIR = "samples"
SAMPLE_GUIDANCE = 7.5  # the pipeline's default, which the diffusers example's validation images use


def loss_csv(losses: Sequence[tuple[float, float, float]]) -> str:
    """The loss log: one row per step (1-based), NaN written as an empty field.

    >>> print(loss_csv([(0.5, 0.25, 0.25), (0.125, 0.125, math.nan)]), end="")
    step,loss,instance_loss,prior_loss
    1,0.5,0.25,0.25
    2,0.125,0.125,
    """
    lines = ["step,loss,instance_loss,prior_loss"]
    for step, row in enumerate(losses, start=1):
        lines.append(",".join([str(step), *("" if math.isnan(v) else repr(v) for v in row)]))
    return "\n".join(lines) + "\n"


def loss_plot_png(losses: Sequence[tuple[float, float, float]], title: str) -> bytes:
    """The loss per step (thin) and its moving average over ~1/20 of the run (thick), as PNG bytes."""
    require("matplotlib", "concepts")
    from matplotlib.figure import Figure  # no pyplot: no global state, no display (Agg canvas)

    figure = Figure(figsize=(7.0, 4.0), layout="constrained")
    axes = figure.subplots()
    steps = list(range(1, len(losses) + 1))
    total = [row[0] for row in losses]
    axes.plot(steps, total, linewidth=0.6, alpha=0.4, color="#4C72B0", label="loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        averaged = [
            sum(total[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(total))
        ]
        axes.plot(steps, averaged, linewidth=1.6, color="#4C72B0", label=f"loss, mean of {window} steps")
    if any(not math.isnan(row[2]) for row in losses):
        axes.plot(steps, [row[1] for row in losses], linewidth=0.6, alpha=0.6, color="#DD8452", label="instance")
        axes.plot(steps, [row[2] for row in losses], linewidth=0.6, alpha=0.6, color="#55A868", label="prior")
    axes.set_xlabel("step")
    axes.set_ylabel("denoising MSE")
    axes.set_title(title)
    axes.legend(fontsize=8)
    return figure_png(figure, 100, metadata={"Software": None})


def write_losses(store: ConceptsDir, losses: Sequence[tuple[float, float, float]], title: str) -> None:
    store.write(LOSS_LOG, loss_csv(losses).encode("utf-8"))
    if losses:
        store.write(LOSS_PLOT, loss_plot_png(losses, title))


def write_samples(
    store: ConceptsDir, parts: DiffusionParts, subjects: dict[str, str], step: int, settings: LoraSettings, size: int
) -> None:
    """``samples_per_class`` images per class (class folder -> what the prompt names) in ``samples/step-NNNNNN/``,
    ``sample_steps`` denoising steps each."""
    per_class, seed = settings.samples_per_class, settings.seed
    jobs = [
        (
            f"{SAMPLES_DIR}/step-{step:06d}/{class_name}-{i}.png",
            CLASS_PROMPT.format(subject),
            derive_seed(seed, class_name, i, "sample"),
        )
        for class_name, subject in subjects.items()
        for i in range(per_class)
    ]
    render_to(store, parts, jobs, steps=settings.sample_steps, guidance=SAMPLE_GUIDANCE, size=size)
