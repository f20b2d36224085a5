"""The Python API behind ``sgid evaluate``: train the same classifier with and without each augmentation over
several seeds and say whether the difference is real.

    from sgid.evaluate import EvalConfig, evaluate, load_folder_dataset

    data = load_folder_dataset("pets/train", "pets/test", generated={"sgid": "pets-sgid", "text2img": "pets-t2i"})
    result = evaluate(data, EvalConfig(methods=("baseline", "randaugment", "sgid", "text2img", "sgid+randaugment"),
                                       backbone="resnet50", seeds=5), out="eval-pets")
    for row in result.summary: print(row.dataset, row.label, row.mean, row.p_value)

Protocol (SGID paper §4, appendix I): for every seed s = 0 … S−1 and every dataset, the training subset
(``shots``/``fraction``), the network's initialisation and the data order are drawn from s alone, so every method
sees the same subset and starts from the same weights at seed s; methods differ only in their augmentation.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sgid.errors import SgidError, disk_full_is_one_line
from sgid.evaluate.backbones import BACKBONES, SMALL_IMAGE, BackboneSpec
from sgid.evaluate.checkpoint import save_classifier
from sgid.evaluate.data import EvalData, Example, fraction_subset, k_shot, linked_generated, stratified_split
from sgid.evaluate.generated import stand_in_suffix, tiny_warning
from sgid.evaluate.methods import BASELINE, GENERATED, Variant, parse_methods, variants
from sgid.evaluate.mixing import MIX_MODES, NEEDS_PROPORTION, NO_PROPORTION, Plan, make_plan
from sgid.evaluate.perturb import PERTURBATIONS
from sgid.evaluate.report import results_json, results_markdown, write_plots
from sgid.evaluate.stats import BEST, CORRECTIONS, RunRecord, Summary, statistics, summarize
from sgid.evaluate.store import EvaluationStore, finished_runs
from sgid.evaluate.train import TrainSettings, fit, test_accuracy
from sgid.evaluate.zeroshot import NAME as ZERO_SHOT
from sgid.evaluate.zeroshot import zero_shot_accuracy
from sgid.models.loading import resolve_device
from sgid.outdir import check_out_dir
from sgid.progress import bar, counted, estimate_note, note, warn
from sgid.seeding import derive_seed

FORMAT_VERSION = 1
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_IMAGE_SIZE = 4096  # --image-size: a classifier input side; larger would only exhaust memory


@dataclass(frozen=True)
class EvalConfig:
    """The options of an evaluation (the CLI flags). ``None`` means the backbone recipe's default."""

    methods: tuple[str, ...] = (BASELINE,)
    backbone: str = "small_cnn"
    seeds: int = 5
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # None: the recipe's lr, or the best of its grid on validation
    shots: int | None = None  # k images per class
    fraction: float | None = None  # a stratified fraction of the training set (e.g. 0.1)
    mix: str = "add"
    proportions: tuple[float, ...] = ()  # one variant per value for methods with generated images
    image_size: int | None = None
    linear_probe: bool = False
    weights: str | None = None  # local file (or name) of pre-trained weights
    pretrained: bool = True  # False: random initialisation even for pre-trained backbones (smoke tests)
    arch: dict[str, Any] = field(default_factory=dict)  # architecture overrides (tiny test configs)
    val_fraction: float = 0.1  # held out of the training set for the lr search when there is no val split
    zero_shot_row: bool = False  # add zero-shot CLIP as a reference row
    zero_shot_weights: str | None = None  # its weights, when the trained backbone is another one
    zero_shot_arch: dict[str, Any] = field(default_factory=dict)
    save_models: bool = False
    compare_to: str = BASELINE  # what each row is tested against: baseline, best, or a method (--compare-to)
    correction: str = "none"  # multiple-comparison correction per column: none or holm (--correction)
    device: str = "auto"
    threads: int | None = None
    workers: int = 0
    quiet: bool = False
    overwrite: bool = False

    def check(self, generated: Sequence[str] = (GENERATED,)) -> tuple[BackboneSpec, tuple[Variant, ...]]:
        """Validate every option (before any data is read or model trained); return the backbone and variants.

        ``generated``: the names of the generated sets (``--generated NAME=DIR``), valid method components."""
        spec = BACKBONES.get(self.backbone)
        methods = parse_methods(self.methods, PERTURBATIONS.names(), generated)
        for name, value, low in (
            ("--seeds", self.seeds, 1),
            ("--epochs", self.epochs, 1),
            ("--batch-size", self.batch_size, 1),
            ("--shots", self.shots, 1),
            ("--image-size", self.image_size, 8),
            ("--threads", self.threads, 1),
            ("--workers", self.workers, 0),
        ):
            if value is not None and value < low:
                raise SgidError(f"{name} must be at least {low}, got {value}")
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise SgidError(f"--image-size must be at most {MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise SgidError(f"--lr must be a positive finite number, got {self.lr}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise SgidError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.shots is not None and self.fraction is not None:
            raise SgidError("--shots and --fraction are alternatives; pass one")
        if not 0 < self.val_fraction < 1:
            raise SgidError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        MIX_MODES.get(self.mix)
        bad = [p for p in self.proportions if not 0 <= p <= 1]
        if bad:
            raise SgidError(f"--proportion must be in [0, 1], got {bad[0]:g}")
        if len(set(self.proportions)) != len(self.proportions):
            raise SgidError("--proportion lists a value twice")
        uses_generated = any(m.generated for m in methods)
        if self.proportions and not uses_generated:
            raise SgidError("--proportion applies to methods with generated images (e.g. --methods baseline,generated)")
        if uses_generated and self.mix in NEEDS_PROPORTION and not self.proportions:
            raise SgidError(f"--mix {self.mix} needs --proportion P (or a sweep, e.g. 0,0.25,0.5,0.75,1)")
        if self.mix in NO_PROPORTION and self.proportions:
            raise SgidError(f"--mix {self.mix} takes no --proportion")
        if spec.recipe is None and (len(methods) > 1 or self.zero_shot_row):
            raise SgidError(
                f"--backbone {self.backbone} is not trained, so it evaluates no augmentation; use it "
                f"with --methods baseline, or add --zero-shot-row to a trained backbone"
            )
        if self.linear_probe and not spec.pretrained:
            raise SgidError(f"--linear-probe needs a pre-trained backbone, not {self.backbone} (from scratch)")
        variant_list = variants(methods, self.mix, self.proportions)
        check_comparison(self.compare_to, self.correction, variant_list)
        return spec, variant_list

    def protocol(self) -> dict[str, Any]:
        """What makes runs comparable: changing any of it in an existing --out is refused."""
        return {
            "format": FORMAT_VERSION,
            "backbone": self.backbone,
            "arch": self.arch,
            "pretrained": self.pretrained,
            "weights": self.weights,
            "linear_probe": self.linear_probe,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "image_size": self.image_size,
            "shots": self.shots,
            "fraction": self.fraction,
            "val_fraction": self.val_fraction,
            "zero_shot_weights": self.zero_shot_weights,
            "zero_shot_arch": self.zero_shot_arch,
        }


def check_comparison(compare_to: str, correction: str, variant_list: Sequence[Variant]) -> None:
    """``--compare-to`` names baseline, best, a method of ``--methods`` or one of its variants;
    ``--correction`` is none or holm."""
    if correction not in CORRECTIONS:
        raise SgidError(f"invalid --correction {correction!r}; choose from: {', '.join(CORRECTIONS)}")
    if compare_to in (BASELINE, BEST) or any(v.slug == compare_to for v in variant_list):
        return
    matches = [v.slug for v in variant_list if v.method.name == compare_to]
    if not matches:
        names = [BASELINE, BEST, *dict.fromkeys(v.method.name for v in variant_list if v.method.name != BASELINE)]
        raise SgidError(f"invalid --compare-to {compare_to!r}; choose from: {', '.join(names)}")
    if len(matches) > 1:
        raise SgidError(
            f"--compare-to {compare_to} runs at several proportions; name one of its rows: {', '.join(matches)}"
        )


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: every finished run in ``out``, their summary, and what this call did."""

    out: Path
    records: list[RunRecord]
    summary: list[Summary]
    trained: int  # runs trained by this call
    reused: int  # runs found finished in out and not redone
    files: list[Path]


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- per-seed data -------------------------------------------------------------------------------------------


def training_subset(data: EvalData, seed: int, config: EvalConfig) -> tuple[Example, ...]:
    """The real training images of seed ``seed``: k-shot, a fraction, or all."""
    subset_seed = derive_seed(seed, data.name, "subset")
    if config.shots is not None:
        return k_shot(data.train, config.shots, subset_seed)
    if config.fraction is not None:
        return fraction_subset(data.train, config.fraction, subset_seed)
    return data.train


def training_plan(data: EvalData, variant: Variant, real: Sequence[Example], seed: int) -> Plan:
    """Real images, mixed with the generated images linked to them when the variant uses generated images."""
    if variant.method.source is None:
        return make_plan(None, real, (), None, seed)
    return make_plan(
        variant.mix,
        real,
        linked_generated(data.generated_of(variant.method.source), real),
        variant.proportion,
        derive_seed(seed, data.name, "mix"),
    )


def train_settings(data: EvalData, spec: BackboneSpec, config: EvalConfig, device: str) -> TrainSettings:
    """The backbone's recipe for this dataset with the user's overrides, and the input size."""
    assert spec.recipe is not None
    recipe = spec.recipe.for_dataset(data.name)
    recipe = replace(recipe, epochs=config.epochs or recipe.epochs, batch_size=config.batch_size or recipe.batch_size)
    if config.lr is not None:
        recipe = replace(recipe, lr=config.lr, lr_grid=())
    native = data.native_size()
    image_size = spec.resolve_image_size(native, config.image_size)
    pad_crop = native is not None and native == (image_size, image_size) and image_size <= SMALL_IMAGE
    return TrainSettings(
        backbone=spec.name,
        image_size=image_size,
        pad_crop=pad_crop,
        recipe=recipe,
        pretrained=config.pretrained,
        weights=config.weights,
        arch=dict(config.arch),
        linear_probe=config.linear_probe,
        device=device,
        workers=config.workers,
        quiet=config.quiet,
    )


def check_data(data: EvalData, variant_list: Sequence[Variant], config: EvalConfig) -> None:
    """Fail before training on anything the data makes impossible (every seed's subset and plan is built)."""
    if not SAFE_NAME.match(data.name):
        raise SgidError(f"dataset name {data.name!r} must be letters, digits, '_', '-' or '.' (it names folders)")
    if not data.train or not data.test:
        raise SgidError(f"dataset {data.name}: the {'training' if not data.train else 'test'} set is empty")
    for source in dict.fromkeys(v.method.source for v in variant_list if v.method.source is not None):
        if not data.generated_of(source):
            how = "--generated DIR" if source == GENERATED else f"--generated {source}=DIR"
            have = data.generated_sets()
            known = f" (this dataset's generated sets: {', '.join(have)})" if have else ""
            raise SgidError(
                f"dataset {data.name}: methods with {source!r} need {how} (an sgid augment output with images){known}"
            )
    for seed in range(config.seeds):
        real = training_subset(data, seed, config)
        for variant in variant_list:
            training_plan(data, variant, real, seed)


# -- running -------------------------------------------------------------------------------------------------


def select_lr(
    data: EvalData,
    variant: Variant,
    settings: TrainSettings,
    config: EvalConfig,
    store: EvaluationStore,
    on_epoch: EpochHook | None = None,
) -> tuple[float, dict[str, Any] | None]:
    """The recipe's lr, or the best of its grid on validation (first seed; the paper's fixed-seed grid search).

    Validation is the dataset's val split, else ``val_fraction`` of the (subsetted) training set held out."""
    recipe = settings.recipe
    if not recipe.lr_grid:
        return recipe.lr, None
    found = store.lr_search(data.name, variant.slug)
    if found is not None and [float(x) for x in found["grid"]] == list(recipe.lr_grid):
        return float(found["chosen"]), found
    real = training_subset(data, 0, config)
    if data.val:
        train_part, val = real, data.val
    else:
        train_part, val = stratified_split(real, config.val_fraction, derive_seed(0, data.name, "val"))
    plan = training_plan(data, variant, train_part, 0)
    scores: dict[str, float] = {}
    for lr in recipe.lr_grid:
        result = fit(
            plan,
            len(data.classes),
            variant.method.perturbations,
            settings,
            derive_seed(0, data.name, "train"),
            lr=lr,
            desc=f"{data.name} {variant.label} lr {lr:g}",
            on_epoch=on_epoch,
        )
        scores[f"{lr:g}"] = test_accuracy(result.model, val, len(data.classes), settings).accuracy
    chosen = max(recipe.lr_grid, key=lambda lr: scores[f"{lr:g}"])
    search = {
        "grid": list(recipe.lr_grid),
        "val_accuracy": scores,
        "chosen": chosen,
        "validation": "val split" if data.val else f"{config.val_fraction:g} of the training set held out",
    }
    store.save_lr_search(data.name, variant.slug, search)
    return chosen, search


def row_label(data: EvalData, variant: Variant) -> str:
    """The variant's label, saying when its generated images come from a stand-in for the paper's baseline:
    ``text2img (templates) [add]``."""
    name = variant.method.name
    if variant.method.source is None:
        return variant.label
    suffix = stand_in_suffix(data.runs_of(variant.method.source))
    return name + suffix + variant.label[len(name) :]


def run_one(
    data: EvalData,
    variant: Variant,
    seed: int,
    settings: TrainSettings,
    config: EvalConfig,
    store: EvaluationStore,
    lr: float,
    lr_search: dict[str, Any] | None,
    on_epoch: EpochHook | None = None,
) -> RunRecord:
    """Train and test one (dataset, variant, seed) and save it."""
    real = training_subset(data, seed, config)
    plan = training_plan(data, variant, real, seed)
    result = fit(
        plan,
        len(data.classes),
        variant.method.perturbations,
        settings,
        derive_seed(seed, data.name, "train"),
        lr=lr,
        desc=f"{data.name} {variant.label} seed {seed}",
        on_epoch=on_epoch,
    )
    acc = test_accuracy(result.model, data.test, len(data.classes), settings)
    if config.save_models:
        spec = BACKBONES.get(settings.backbone)
        save_classifier(
            result.model.cpu(),
            store.model_dir(data.name, variant.slug, seed),
            backbone=settings.backbone,
            classes=list(data.classes),
            image_size=settings.image_size,
            mean=spec.mean,
            std=spec.std,
        )
    in_plan = sum(ex.generated for ex in plan.examples())
    details = {
        "data_fingerprint": data.fingerprint(variant.method.source or False),
        "generated_runs": [run.to_json() for run in data.runs_of(variant.method.source)]
        if variant.method.source
        else [],
        "lr": lr,
        "lr_search": lr_search,
        "epochs": settings.recipe.epochs,
        "batch_size": settings.recipe.batch_size,
        "optimizer": settings.recipe.optimizer,
        "schedule": settings.recipe.schedule,
        "image_size": settings.image_size,
        "pad_crop": settings.pad_crop,
        "perturbations": list(variant.method.perturbations),
        "train_real": len(real),
        "plan_size": len(plan.slots),
        "plan_generated": in_plan,
        "swap_probability": plan.swap_probability,
        "draws": result.draws,
        "generated_draws": result.generated_draws,
        "generated_fraction_seen": result.generated_draws / max(result.draws, 1),
        "test_size": acc.total,
        "final_train_loss": result.train_loss,
        "seconds": round(result.seconds, 3),
        "device": settings.device,
        "torch_threads": torch.get_num_threads(),
    }
    record = RunRecord(
        dataset=data.name,
        variant=variant.slug,
        label=row_label(data, variant),
        method=variant.method.name,
        seed=seed,
        accuracy=acc.accuracy,
        per_class=dict(zip(data.classes, acc.per_class, strict=True)),
        mix=variant.mix,
        proportion=variant.proportion,
        details=details,
    )
    store.save(record)
    return record


def run_zero_shot(data: EvalData, config: EvalConfig, device: str, store: EvaluationStore) -> RunRecord:
    started = time.perf_counter()
    spec = BACKBONES.get(ZERO_SHOT)
    image_size = spec.resolve_image_size(None, config.image_size)
    own = config.backbone == ZERO_SHOT  # else a reference row next to another backbone, with its own weights
    acc = zero_shot_accuracy(
        data.classes,
        data.test,
        image_size=image_size,
        weights=config.weights if own else config.zero_shot_weights,
        arch=config.arch if own else config.zero_shot_arch,
        pretrained=config.pretrained,
        device=device,
    )
    record = RunRecord(
        dataset=data.name,
        variant=ZERO_SHOT,
        label=ZERO_SHOT,
        method=ZERO_SHOT,
        seed=0,
        accuracy=acc.accuracy,
        per_class=dict(zip(data.classes, acc.per_class, strict=True)),
        reference=True,
        details={
            "data_fingerprint": data.fingerprint(False),
            "test_size": acc.total,
            "image_size": image_size,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    store.save(record)
    return record


def _needs_training(d: EvalData, variant: Variant, seed: int, config: EvalConfig, store: EvaluationStore) -> bool:
    model_missing = (
        config.save_models and not (store.model_dir(d.name, variant.slug, seed) / "classifier.safetensors").exists()
    )
    return (
        model_missing
        or store.finished(d.name, variant.slug, seed, d.fingerprint(variant.method.source or False)) is None
    )


EpochHook = Callable[[int, float, int], None]
CPU_PASSES_HINT = 1_000_000  # image passes above which a CPU evaluation is called long before it is measured


@dataclass
class WorkPlan:
    """The training still to do, said before it starts, and an estimate measured on the first epoch."""

    runs: int
    image_passes: int  # images drawn over every epoch of every run still to train
    description: str
    hints: list[str]
    quiet: bool
    slow_at_once: bool = False  # known to be long before measuring: a big network or much work on a CPU
    estimated: bool = False

    @classmethod
    def of(
        cls,
        todo: Sequence[tuple[EvalData, Variant, int]],
        settings: dict[str, TrainSettings],
        config: EvalConfig,
        device: str,
    ) -> WorkPlan:
        passes = 0
        for d, variant, seed in todo:
            size = len(training_plan(d, variant, training_subset(d, seed, config), seed).slots)
            passes += size * settings[d.name].recipe.epochs
        backbones = {s.backbone for s in settings.values()}
        epochs = sorted({s.recipe.epochs for s in settings.values()})
        description = (
            f"{len(todo)} training run(s) of {', '.join(sorted(backbones))}, {'/'.join(map(str, epochs))} epochs "
            f"each, {passes:,} image passes in all, on {device}"
        )
        hints = []
        if config.backbone != "small_cnn":
            hints.append("--backbone small_cnn")
        if max(epochs, default=0) > 10:
            hints.append("--epochs 5")
        if config.seeds > 2:
            hints.append("--seeds 2")
        if config.shots is None and config.fraction is None:
            hints.append("--shots 10")
        big = config.backbone != "small_cnn" or passes > CPU_PASSES_HINT
        return cls(len(todo), passes, description, hints, config.quiet, slow_at_once=device == "cpu" and big)

    def announce(self) -> None:
        if not self.runs:
            return
        line = f"planned: {self.description}"
        if self.slow_at_once and self.hints:
            line += f"; long on a CPU: to make it small, {' '.join(self.hints)}"
        note(line, self.quiet)

    def epoch_done(self, epoch: int, seconds: float, drawn: int) -> None:
        """After the first epoch trained by this call: the time all the planned training should take."""
        if self.estimated or drawn == 0 or seconds <= 0:
            return
        self.estimated = True
        estimate_note(
            seconds, drawn, self.image_passes, "the planned training", "its first epoch", self.hints, self.quiet
        )


def _package_info() -> dict[str, Any]:
    from sgid.versions import package_versions

    versions = package_versions(("sgid", "torch", "torchvision", "timm", "open_clip_torch", "scipy", "numpy"))
    return {"versions": versions, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def evaluate(data: EvalData | Sequence[EvalData], config: EvalConfig, out: str | Path) -> Evaluation:
    """Run (or resume) the evaluation in ``out`` and write results.json, results.md and plots there."""
    datasets = [data] if isinstance(data, EvalData) else list(data)
    if len({d.name for d in datasets}) != len(datasets):
        raise SgidError("two datasets have the same name; give each its own (--name)")
    # 1. Check the options and the data: everything that can fail does so before any training.
    spec, variant_list = config.check([GENERATED, *(name for d in datasets for name in d.generated_sets())])
    device = str(resolve_device(config.device, kinds=("cpu", "cuda")))  # the training loop runs on cpu or cuda
    trained_backbone = spec.recipe is not None
    for d in datasets:  # what reading left out, said before a check it may explain ("fewer than --shots")
        for line in d.notes:
            warn(line)
    settings: dict[str, TrainSettings] = {}
    for d in datasets:
        check_data(d, variant_list if trained_backbone else [], config)
        if trained_backbone:
            settings[d.name] = train_settings(d, spec, config, device)
    reads = [(what, folder) for d in datasets for what, folder in d.folders]
    reads += [
        (f"the --generated {'' if run.name == GENERATED else run.name + ' '}folder", Path(run.folder))
        for d in datasets
        for run in d.runs
    ]
    check_out_dir(out, reads, command="evaluate")
    used = {v.method.source for v in variant_list}
    warning = tiny_warning(run for d in datasets for run in d.runs if run.name in used)
    if warning:
        warn(warning)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or default_threads())
    try:
        runs = lambda: counted(finished_runs(Path(out)), "finished training run", "finished training runs")  # noqa: E731
        with disk_full_is_one_line(Path(out), lambda: f"{runs()} kept"):
            return _run_all(datasets, variant_list, settings, spec, config, device, Path(out))
    finally:
        torch.set_num_threads(previous_threads)


def _run_all(
    datasets: list[EvalData],
    variant_list: Sequence[Variant],
    settings: dict[str, TrainSettings],
    spec: BackboneSpec,
    config: EvalConfig,
    device: str,
    out: Path,
) -> Evaluation:
    # 2. Open (or resume) the output folder.
    trained_backbone = spec.recipe is not None
    started = time.perf_counter()
    trained = reused = 0
    with EvaluationStore(out, config.protocol(), overwrite=config.overwrite, info=_package_info()) as store:
        # 3. Reference rows: untrained, deterministic, one evaluation per dataset.
        if not trained_backbone or config.zero_shot_row:
            for d in datasets:
                if store.finished(d.name, ZERO_SHOT, 0, d.fingerprint(False)) is None:
                    run_zero_shot(d, config, device, store)
        # 4. Every (dataset, variant, seed) not finished yet; the same seeds for every method.
        jobs = [(d, v, s) for d in datasets if trained_backbone for v in variant_list for s in range(config.seeds)]
        todo = [job for job in jobs if _needs_training(*job, config, store)]
        reused = len(jobs) - len(todo)
        work = WorkPlan.of(todo, settings, config, device)
        work.announce()
        with bar(len(jobs), "runs", "run", config.quiet) as progress:
            progress.update(reused)
            for d, variant, seed in todo:
                lr, search = select_lr(d, variant, settings[d.name], config, store, work.epoch_done)
                run_one(d, variant, seed, settings[d.name], config, store, lr, search, work.epoch_done)
                trained += 1
                progress.update(1)
        if reused:
            note(f"resumed: {reused} finished run(s) reused from {out}, {trained} trained", config.quiet)
        # 5. Report every finished run in the folder.
        order = {v.slug: i for i, v in enumerate(variant_list)}
        names = {d.name: i for i, d in enumerate(datasets)}
        records = sorted(
            store.records(),
            key=lambda r: (
                names.get(r.dataset, len(names)),
                r.dataset,
                order.get(r.variant, len(order)),
                r.variant,
                r.seed,
            ),
        )
        summary = summarize(records, config.compare_to, config.correction)
        protocol = dict(
            config.protocol(),
            seeds=config.seeds,
            mix=config.mix,
            proportions=list(config.proportions),
            compare_to=config.compare_to,
            correction=config.correction,
            device=device,
        )
        if not spec.pretrained:
            del protocol["pretrained"]
        protocol.update({f"training ({name})": s.describe() for name, s in settings.items()})
        protocol.update({f"left out ({d.name})": "; ".join(d.notes) for d in datasets if d.notes})
        files = [
            store.write(
                "results.json",
                results_json(
                    protocol,
                    records,
                    summary,
                    statistics(config.compare_to, config.correction),
                    [{"dataset": d.name, **item} for d in datasets for item in d.skipped],
                ),
            ),
            store.write(
                "results.md",
                results_markdown(
                    f"sgid evaluate: {config.backbone}",
                    protocol,
                    summary,
                    records,
                    config.compare_to,
                    config.correction,
                ),
            ),
            *write_plots(summary, store.out),
        ]
    note(f"evaluation finished in {time.perf_counter() - started:.0f}s: {out / 'results.md'}", config.quiet)
    return Evaluation(out, records, summary, trained, reused, files)
