"""What a classifier is trained and tested on: real examples, generated examples linked to their sources, subsets.

An :class:`Example` is one labelled image that loads on demand. Real examples are keyed by their path relative to
the training folder (``"<class>/<file>"``); a generated example made by ``sgid augment`` carries that key as its
``source`` (metadata.jsonl's ``source`` column), which is how generated images follow the real images they came
from into k-shot and fractional subsets: a generated image is used only if its source is in the training subset.
Generated images without a source (text-to-image methods) are kept for every class in the training set.

A generated folder must come from the training images: every ``source`` must be a training image, and its
recorded ``source_sha256`` must equal that image's content (the file's bytes; for a ``--dataset`` image, the PNG
that ``--export-train`` writes). A folder made from test (or validation) images is refused by name, and so is the
first image whose source differs. Rows without ``source_sha256`` (hand-made manifests) are linked by path only,
and a note says how many.

Subsets are drawn per class with a seed (k-shot: ``k`` images per class; fraction: ``round(f·n_c)`` per class, at
least one — 001's 10% protocol).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sgid.dataset import empty_classes_note, scan
from sgid.errors import SgidError
from sgid.evaluate.generated import GeneratedRun, GeneratedSpecs, parse_generated, read_provenance
from sgid.evaluate.methods import GENERATED
from sgid.images import ImageError, load_rgb, png_bytes
from sgid.manifest import MANIFEST, RUN_FILE, ManifestRow, read_run, read_run_info, recorded_input_dir
from sgid.progress import note
from sgid.runstore import atomic_write


@dataclass(frozen=True)
class FileImage:
    """An image file, decoded to RGB when called."""

    path: Path

    def __call__(self) -> Image.Image:
        try:
            return load_rgb(self.path).image
        except ImageError as exc:
            raise SgidError(f"cannot use image {self.path}: {exc}") from None


@dataclass(frozen=True, eq=False)
class ArrayImage:
    """An in-memory ``(H, W, 3)`` uint8 array (CIFAR, scikit-learn's digits)."""

    array: np.ndarray

    def __call__(self) -> Image.Image:
        return Image.fromarray(self.array, "RGB")


@dataclass(frozen=True, eq=False)
class DatasetImage:
    """Item ``index`` of a map-style dataset returning ``(image, label)`` (torchvision datasets)."""

    dataset: Any
    index: int

    def __call__(self) -> Image.Image:
        image = self.dataset[self.index][0]
        return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class Example:
    key: str  # real: "<class>/<file>" relative to the training root; generated: "<run>:<file_name>"
    label: int  # index into EvalData.classes
    load: Callable[[], Image.Image] = field(compare=False, repr=False)
    source: str | None = None  # generated: key of the real image it was made from (None: no source)
    generated: bool = False
    group: str = GENERATED  # generated: the --generated set it belongs to, a method name ("sgid", "generated")
    source_sha256: str | None = field(default=None, compare=False)  # generated: the source's recorded content hash


@dataclass(frozen=True)
class EvalData:
    """One dataset of an evaluation: a column of results.md."""

    name: str
    classes: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    val: tuple[Example, ...] = ()
    generated: tuple[Example, ...] = ()  # every generated set's examples (Example.group says which)
    runs: tuple[GeneratedRun, ...] = ()  # where each generated folder came from
    folders: tuple[tuple[str, Path], ...] = ()  # the folders it was read from ("the --train folder", path)
    notes: tuple[str, ...] = ()  # what reading left out and why (class folders without images, unreadable images)
    skipped: tuple[dict[str, str], ...] = ()  # every image left out: {"folder", "image", "class", "reason"}

    def generated_of(self, group: str) -> tuple[Example, ...]:
        """The examples of one generated set (``--generated group=DIR``)."""
        return tuple(ex for ex in self.generated if ex.group == group)

    def generated_sets(self) -> list[str]:
        """The names of the generated sets, in the order given."""
        return list(dict.fromkeys(ex.group for ex in self.generated))

    def runs_of(self, group: str) -> tuple[GeneratedRun, ...]:
        return tuple(run for run in self.runs if run.name == group)

    def fingerprint(self, with_generated: bool | str = True) -> str:
        """A hash of the name, classes and example keys: identifies the data a finished run used. ``True``:
        every generated image; a set's name: that set only, with its runs' identities (so a method does not
        depend on the other sets, and a run regenerated with other settings is new data); ``False``: none
        (runs without generated images stay valid when a generated folder is added later)."""
        digest = hashlib.sha256()
        for part in (self.name, *self.classes):
            digest.update(part.encode() + b"\x1f")
        splits = [("train", self.train), ("test", self.test), ("val", self.val)]
        if with_generated is True:
            splits.append(("generated", self.generated))
        elif with_generated:
            splits.append(("generated", self.generated_of(with_generated)))
        for split, examples in splits:
            digest.update(split.encode() + b"\x1e")
            for ex in examples:
                digest.update(f"{ex.key}\x1f{ex.label}\x1f{ex.source}\x1e".encode())
        if isinstance(with_generated, str):
            for run in self.runs_of(with_generated):
                if run.identity is not None:
                    digest.update(f"run\x1f{run.identity}\x1e".encode())
        return digest.hexdigest()

    def native_size(self, sample: int = 16) -> tuple[int, int] | None:
        """The common (width, height) of the first training images, or None if they differ."""
        sizes = {ex.load().size for ex in self.train[:sample]}
        return sizes.pop() if len(sizes) == 1 else None


# -- reading folders -----------------------------------------------------------------------------------------


def read_image_folder(
    root: Path,
    classes: Sequence[str] | None = None,
    *,
    what: str = "--train",
    notes: list[str] | None = None,
    skipped: list[dict[str, str]] | None = None,
    lost: Sequence[str] = (),
) -> tuple[tuple[str, ...], tuple[Example, ...]]:
    """``root/<class>/<image>`` as examples. With ``classes`` (from the training folder), every class folder
    in ``root`` with images must be one of them; labels index into that list. Every image is decoded once here:
    an unreadable one is left out (a line in ``notes``; in ``skipped`` its folder, path relative to ``root``,
    class and reason) instead of stopping training half way. Class folders without (readable) images are left out
    (not a class), with a line appended to ``notes``. ``lost``: the classes whose every training image is
    unreadable, named as such when ``root`` has images of them."""
    root = Path(root)
    if not root.is_dir():
        raise SgidError(f"{what} folder not found: {root}")
    listing = scan(root)
    failed = unreadable([s.path for s in listing.sources])
    broken = [s for s in listing.sources if s.path in failed]
    sources = [s for s in listing.sources if s.path not in failed]
    empty = sorted({*listing.empty, *(set(listing.classes) - {s.class_name for s in sources})})
    if notes is not None:
        if broken:
            notes.append(left_out_note(what, root, [(s.relpath, failed[s.path]) for s in broken]))
        if empty:
            notes.append(f"{what} {empty_classes_note(root, tuple(empty))}")
    if skipped is not None:
        skipped.extend(
            {"folder": what, "image": s.relpath, "class": s.class_name, "reason": failed[s.path]} for s in broken
        )
    present = [c for c in listing.classes if c not in empty]
    names = tuple(classes) if classes is not None else tuple(present)
    unknown = sorted(set(present) - set(names))
    vanished = [c for c in unknown if c in lost]
    if vanished:
        raise SgidError(
            f"{what} {root} has images of {len(vanished)} class(es) whose every --train image is unreadable "
            f"({', '.join(vanished[:10])}): repair those training images, or move the class out of {what}"
        )
    if unknown:
        raise SgidError(
            f"{what} {root} has classes that are not in the training set (a class needs training images): "
            f"{', '.join(unknown[:10])}"
        )
    index = {name: i for i, name in enumerate(names)}
    examples = tuple(Example(key=s.relpath, label=index[s.class_name], load=FileImage(s.path)) for s in sources)
    return names, examples


def unreadable(paths: Sequence[Path]) -> dict[Path, str]:
    """{path: reason} for the images that do not decode (:func:`load_rgb`'s one-line reason), in ``paths``'
    order. Decoded in threads (Pillow's decoders release the GIL); nothing is kept."""

    def reasons(chunk: Sequence[Path]) -> list[str | None]:
        found: list[str | None] = []
        for path in chunk:
            try:
                load_rgb(path)
                found.append(None)
            except ImageError as exc:
                found.append(str(exc))
        return found

    chunks = [paths[i : i + 64] for i in range(0, len(paths), 64)]  # a task per image costs more than a small PNG
    if not chunks:
        return {}
    if _mean_file_size(chunks[0]) < THREADED_CHECK_BYTES or len(chunks) == 1:
        found = reasons(paths)  # small files: Python's share of the work dominates and threads only contend
    else:
        # load_rgb's warnings.catch_warnings is not thread-safe: whatever the threads leave in the filters is
        # put back to this state when they are done
        with warnings.catch_warnings(), ThreadPoolExecutor(min(8, os.cpu_count() or 1, len(chunks))) as pool:
            found = [r for part in pool.map(reasons, chunks) for r in part]
    return {path: r for path, r in zip(paths, found, strict=True) if r is not None}


#: images at least this large on average (in the first 64) are checked in threads. Measured on 2 cores
#: (benchmarks/bench_image_check.py): 512x512 JPEGs (~125 KB) 1.6-1.95x faster in threads, 32x32 PNGs (~4 KB)
#: 2x slower (so those are checked in this thread)
THREADED_CHECK_BYTES = 32 * 1024


def _mean_file_size(paths: Sequence[Path]) -> float:
    sizes = []
    for path in paths:
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            continue
    return sum(sizes) / len(sizes) if sizes else 0.0


def left_out_note(what: str, root: Path, failed: Sequence[tuple[str, str]], hint: str = "", limit: int = 5) -> str:
    """The warning for unreadable images left out: how many, the first few by name with their reasons."""
    named = "; ".join(f"{name} ({reason})" for name, reason in failed[:limit])
    more = f"; and {len(failed) - limit} more" if len(failed) > limit else ""
    return f"{what} {root}: {len(failed)} unreadable image(s) left out: {named}{more}{hint}"


def read_generated(
    directory: Path,
    classes: Sequence[str],
    *,
    tag: str | None = None,
    group: str = GENERATED,
    notes: list[str] | None = None,
    skipped: list[dict[str, str]] | None = None,
    unusable: Collection[str] = (),
    lost: Collection[str] = (),
) -> tuple[Example, ...]:
    """The generated images of an ``sgid augment`` output folder, from its metadata.jsonl.

    Rows with method ``original`` are copies of real images and are skipped (the real training set has them).
    Left out, each with a line in ``notes`` and an entry in ``skipped``: an image that does not decode (damaged
    since the run wrote it: deleting it and rerunning the command that made it makes it again), one made from a
    training image in ``unusable`` (unreadable), and one of a class in ``lost`` (no readable training image).
    """
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise SgidError(f"--generated {directory} has no {MANIFEST}; expected the output folder of sgid augment")
    index = {name: i for i, name in enumerate(classes)}
    tag = tag or directory.name
    flag = generated_flag(group)
    examples: list[Example] = []
    rows: list[ManifestRow] = []
    orphans: list[dict[str, str]] = []
    for number, row in enumerate(read_run(directory).rows, start=1):
        if row.is_original:
            continue
        if row.source in unusable or row.label in lost:
            why = f"made from unreadable training image {row.source}" if row.source in unusable else ""
            why = why or f"its class {row.label} has no readable training image"
            orphans.append({"folder": flag, "image": row.file_name, "class": row.label, "reason": why})
            continue
        if row.label not in index:
            raise SgidError(f"{manifest}, row {number}: class {row.label!r} is not in the training set")
        if not (directory / row.file_name).is_file():
            raise SgidError(f"{manifest}, row {number}: image {row.file_name} is missing")
        rows.append(row)
        examples.append(
            Example(
                key=f"{tag}:{row.file_name}",
                label=index[row.label],
                load=FileImage(directory / row.file_name),
                source=row.source,
                generated=True,
                source_sha256=row.source_sha256,
                group=group,
            )
        )
    reasons = unreadable([directory / row.file_name for row in rows])
    broken = {row.file_name: reasons[directory / row.file_name] for row in rows if directory / row.file_name in reasons}
    if notes is not None:
        if broken:
            hint = (
                "; delete them and rerun the sgid command that made the folder (sgid augment with the same options; "
                "for a filtered folder, then sgid filter) to make them again"
            )
            notes.append(left_out_note(flag, directory, list(broken.items()), hint))
        if orphans:
            notes.append(
                f"{flag} {directory}: {len(orphans)} image(s) made from unreadable training images left out "
                f"({orphans[0]['image']}: {orphans[0]['reason']}{'; …' if len(orphans) > 1 else ''})"
            )
    if skipped is not None:
        skipped.extend(
            {"folder": flag, "image": row.file_name, "class": row.label, "reason": broken[row.file_name]}
            for row in rows
            if row.file_name in broken
        )
        skipped.extend(orphans)
    return tuple(ex for ex, row in zip(examples, rows, strict=True) if row.file_name not in broken)


def lost_classes(skipped: Iterable[Mapping[str, str]], classes: Sequence[str]) -> list[str]:
    """The classes whose every training image was left out as unreadable (so they are not classes)."""
    return sorted({item["class"] for item in skipped if item["folder"] == "--train"} - set(classes))


def generated_flag(group: str) -> str:
    """How a generated set is named in messages: ``--generated`` (the default set) or ``--generated NAME``."""
    return "--generated" if group == GENERATED else f"--generated {group}"


def generated_input_dir(directory: Path) -> str | None:
    """The input folder an ``sgid augment`` run was made from (run.json's config.input_dir), if recorded."""
    try:
        input_dir = recorded_input_dir(read_run_info(Path(directory) / RUN_FILE))
    except SgidError:
        return None
    return str(input_dir) if input_dir else None


def export_bytes(example: Example) -> bytes:
    """The bytes ``sgid augment`` reads for a real example: the file itself, or the PNG ``--export-train`` writes."""
    if isinstance(example.load, FileImage):
        return example.load.path.read_bytes()
    return png_bytes(example.load())


def content_sha256(example: Example) -> str:
    return hashlib.sha256(export_bytes(example)).hexdigest()


def verify_sources(
    generated: Sequence[Example], train: Sequence[Example], held_out: Sequence[Example], directory: Path
) -> None:
    """Refuse a generated folder whose sources are not the training images (one line naming the first mismatch):
    a source that is a test or validation image (same content), a source that is no training image, or one whose
    recorded ``source_sha256`` differs from the training image at that path."""
    sourced = [ex for ex in generated if ex.source is not None]
    if not sourced:
        return
    real = {ex.key: ex for ex in train}
    if not any(ex.source in real for ex in sourced):
        _refuse_unlinked(sourced, held_out, directory)
    hashes: dict[str, str] = {}
    held: dict[str, str] | None = None
    unverified = 0
    for ex in sourced:
        match = real.get(ex.source)  # type: ignore[arg-type]
        if match is not None and ex.source_sha256 is None:
            unverified += 1
            continue
        if match is not None:
            if match.key not in hashes:
                hashes[match.key] = content_sha256(match)
            if hashes[match.key] == ex.source_sha256:
                continue
        held = held if held is not None else {content_sha256(h): h.key for h in held_out}
        name = ex.key.split(":", 1)[-1]
        if ex.source_sha256 in held:
            raise SgidError(
                f"--generated {directory} was made from test images: {name} comes from {ex.source}, which is "
                f"test/validation image {held[ex.source_sha256]}; generate from the training images only"
            )
        if match is None:
            raise SgidError(
                f"--generated {directory}: {name} was made from {ex.source}, which is not a training image; "
                f"every source must be an image of --train"
            )
        raise SgidError(
            f"--generated {directory}: {name} was made from another {ex.source} than the training image at that "
            f"path (source_sha256 {str(ex.source_sha256)[:12]}… ≠ {hashes[match.key][:12]}…); regenerate from this "
            f"--train"
        )
    if unverified:
        note(
            f"note: {unverified} generated image(s) in {directory} record no source_sha256; they are linked to "
            f"their sources by path only"
        )


def _refuse_unlinked(sourced: Sequence[Example], held_out: Sequence[Example], directory: Path) -> None:
    """No source is a training image: say whether the folder came from the test images, else from where."""
    held = {content_sha256(h): h.key for h in held_out}
    leaked = next((ex for ex in sourced if ex.source_sha256 in held), None)
    if leaked is not None:
        raise SgidError(
            f"--generated {directory} was made from test images: {leaked.key.split(':', 1)[-1]} comes from "
            f"test/validation image {held[leaked.source_sha256]}; generate from the training images only"  # type: ignore[index]
        )
    made_from = generated_input_dir(directory)
    hint = f" (it was made from {made_from})" if made_from else ""
    raise SgidError(
        f"none of the generated images in {directory} come from the training images{hint}; "
        f"their 'source' paths must be relative to --train"
    )


# -- subsets -------------------------------------------------------------------------------------------------


def round_half_up(value: float) -> int:
    """Conventional rounding (2.5 → 3), not Python's round-half-to-even (2.5 → 2)."""
    return int(math.floor(value + 0.5))


def by_class(examples: Iterable[Example]) -> dict[int, list[Example]]:
    groups: dict[int, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.label].append(ex)
    return dict(sorted(groups.items()))


def k_shot(examples: Sequence[Example], k: int, seed: int) -> tuple[Example, ...]:
    """``k`` examples of every class, drawn with ``seed``; a class with fewer than ``k`` is an error."""
    if k < 1:
        raise SgidError(f"--shots must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    chosen: list[Example] = []
    for label, group in by_class(examples).items():
        if len(group) < k:
            raise SgidError(f"class {label} has {len(group)} training images, fewer than --shots {k}")
        chosen.extend(group[i] for i in sorted(rng.choice(len(group), size=k, replace=False)))
    return tuple(chosen)


def fraction_subset(examples: Sequence[Example], fraction: float, seed: int) -> tuple[Example, ...]:
    """``round(fraction · n_c)`` examples of every class (at least one), drawn with ``seed``."""
    if not 0 < fraction <= 1:
        raise SgidError(f"--fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen: list[Example] = []
    for group in by_class(examples).values():
        size = max(1, round_half_up(fraction * len(group)))
        chosen.extend(group[i] for i in sorted(rng.choice(len(group), size=size, replace=False)))
    return tuple(chosen)


def stratified_split(
    examples: Sequence[Example], held_out: float, seed: int
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """Split into (kept, held out) with ``held_out`` of every class (at least one, if the class has two)."""
    rng = np.random.default_rng(seed)
    kept: list[Example] = []
    out: list[Example] = []
    for group in by_class(examples).values():
        size = min(len(group) - 1, max(1, round_half_up(held_out * len(group))))
        picked = set(rng.choice(len(group), size=size, replace=False).tolist())
        for i, ex in enumerate(group):
            (out if i in picked else kept).append(ex)
    return tuple(kept), tuple(out)


def linked_generated(generated: Sequence[Example], train: Sequence[Example]) -> tuple[Example, ...]:
    """The generated examples usable with ``train``: those whose source is a training image, and those
    without a source whose class is in the training set."""
    keys = {ex.key for ex in train}
    labels = {ex.label for ex in train}
    return tuple(ex for ex in generated if (ex.source in keys if ex.source is not None else ex.label in labels))


def export_image_folder(examples: Sequence[Example], out: Path) -> int:
    """Write examples as ``out/<key>`` PNGs (keys are "<class>/<file>.png") so ``sgid augment`` can read them."""
    out = Path(out)
    for ex in examples:
        path = out / ex.key
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, export_bytes(ex))  # never a half-written image, even on a full disk
    return len(examples)


def dataset_name(train: Path) -> str:
    """A column name from the training folder: ``pets/train`` → ``pets``, ``pets_train`` → ``pets_train``."""
    train = Path(train).resolve()
    return train.parent.name if train.name.lower() in ("train", "training", "trainval") else train.name


def load_folder_dataset(
    train: str | Path,
    test: str | Path,
    *,
    val: str | Path | None = None,
    generated: GeneratedSpecs = (),
    name: str | None = None,
) -> EvalData:
    """An evaluation dataset from image folders and ``sgid augment`` output folders (``["sgid=runs/sgid",
    "runs/other"]`` or ``{"sgid": "runs/sgid"}``; a bare folder is the set ``generated``)."""
    notes: list[str] = []
    skipped: list[dict[str, str]] = []
    classes, train_examples = read_image_folder(Path(train), what="--train", notes=notes, skipped=skipped)
    lost = lost_classes(skipped, classes)
    _, test_examples = read_image_folder(Path(test), classes, what="--test", notes=notes, skipped=skipped, lost=lost)
    val_examples: tuple[Example, ...] = ()
    if val is not None:
        val_examples = read_image_folder(Path(val), classes, what="--val", notes=notes, skipped=skipped, lost=lost)[1]
    folders = [("the --train folder", Path(train)), ("the --test folder", Path(test))]
    if val is not None:
        folders.append(("the --val folder", Path(val)))
    data = EvalData(name or dataset_name(Path(train)), classes, train_examples, test_examples, val_examples)
    data = replace(data, folders=tuple(folders), notes=tuple(notes), skipped=tuple(skipped))
    return attach_generated(data, generated)


def attach_generated(data: EvalData, directories: GeneratedSpecs) -> EvalData:
    """``data`` with the generated images of ``directories`` (each must link to the training images), each
    folder in its named set (``NAME=DIR``; a bare folder is the set ``generated``)."""
    if not directories:
        return data
    from sgid.evaluate.perturb import PERTURBATIONS

    pairs = parse_generated(directories, PERTURBATIONS.names())
    tags = [folder.name for _, folder in pairs]
    if len(set(tags)) != len(tags):
        tags = [f"{i}-{tag}" for i, tag in enumerate(tags)]
    found: list[Example] = []
    runs: list[GeneratedRun] = []
    notes, skipped = list(data.notes), list(data.skipped)
    unusable = {item["image"] for item in data.skipped if item["folder"] == "--train"}  # unreadable training images
    lost = lost_classes(data.skipped, data.classes)
    for (group, directory), tag in zip(pairs, tags, strict=True):
        examples = read_generated(
            directory,
            data.classes,
            tag=tag,
            group=group,
            notes=notes,
            skipped=skipped,
            unusable=unusable,
            lost=lost,
        )
        verify_sources(examples, data.train, (*data.test, *data.val), directory)
        found.extend(examples)
        runs.append(read_provenance(group, directory, len(examples)))
    return replace(data, generated=tuple(found), runs=tuple(runs), notes=tuple(notes), skipped=tuple(skipped))
