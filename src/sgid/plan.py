"""The plan of a run: every item, its batch and its shard, fixed before any work is done.

A run is **plan → execute → write**. Planning decides everything that could change an image's bytes:

* every (source, k) of the run is a :class:`Slot`, in sorted source order, with the generator kind and the
  generation size it will have;
* slots of equal (kind, size) are cut into **batches** of ``--batch-size``, over the *full* sorted list of
  slots, so a batch's members never depend on what an earlier, interrupted run had finished. A batch that is
  only partly done is regenerated whole and only its missing items are kept: at a given batch size the bytes
  are the same however often a run was stopped, and whichever engine or worker made them;
* consecutive batches form **shards** (about ``--shard-size`` items): the unit of work engines hand out;
* captions are computed in fixed groups of ``--caption-batch-size`` sources for the same reason.

The tasks an engine runs (:class:`CaptionTask`, :class:`ScoreTask`, :class:`Shard`) are plain data: they
carry file paths, samples and seeds, never models, and never the run folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sgid.dataset import Source
from sgid.images import generation_size
from sgid.models.loading import Geometry
from sgid.sample import Sample

#: Items per shard unless ``--shard-size`` says otherwise.
SHARD_SIZE = 64


@dataclass(frozen=True)
class Slot:
    """One (source, k) of the run before it is planned: where it goes and how it will be batched."""

    source: Source
    k: int
    key: str  # the journal's item key
    file_name: str  # relative to OUT
    kind: str  # generator kind (img2img, text2img, instruct) or COPY
    size: tuple[int, int]  # generation (width, height); (0, 0) when nothing is generated


@dataclass(frozen=True)
class Layout:
    """Every slot of a run cut into batches and shards, from the full sorted item list."""

    batches: tuple[tuple[Slot, ...], ...]  # in execution order
    shard_of: tuple[int, ...]  # shard index of each batch

    @property
    def slots(self) -> Iterator[Slot]:
        for batch in self.batches:
            yield from batch


def lay_out(slots: Sequence[Slot], batch_size: int, shard_size: int = SHARD_SIZE, *, workers: int = 1) -> Layout:
    """Batches of up to ``batch_size`` slots sharing generator kind and generation size (groups in sorted
    (kind, size) order, slots in sorted source order within a group), and shards of consecutive batches.

    Shards hold about ``shard_size`` items, fewer for a small run so that every worker gets several; shard
    boundaries never change a batch, so the shard size does not change any output.
    """
    groups: dict[tuple[str, tuple[int, int]], list[Slot]] = {}
    for slot in slots:
        groups.setdefault((slot.kind, slot.size), []).append(slot)
    batches = [
        tuple(group[i : i + batch_size])
        for key in sorted(groups)
        for group in [groups[key]]
        for i in range(0, len(group), batch_size)
    ]
    per_shard = max(batch_size, min(shard_size, math.ceil(len(slots) / (4 * max(1, workers)))))
    shard_of: list[int] = []
    shard, filled = 0, 0
    for batch in batches:
        if filled >= per_shard:
            shard, filled = shard + 1, 0
        shard_of.append(shard)
        filled += len(batch)
    return Layout(tuple(batches), tuple(shard_of))


def target_size(geometry: Geometry, source_size: tuple[int, int]) -> tuple[int, int]:
    """The generation size of a source of ``source_size`` (aspect kept, short side at the model's size)."""
    if geometry.resolution is None:  # not generated (copies): sizes are the images' own
        return (0, 0)
    return generation_size(source_size, geometry.resolution, geometry.size_multiple)


@dataclass(frozen=True)
class WorkItem:
    """A planned slot inside a batch of work."""

    key: str
    file_name: str
    sample: Sample
    wanted: bool = True  # False: already done; regenerated only so that its batch stays whole


@dataclass(frozen=True)
class Batch:
    size: tuple[int, int]  # generation (width, height) shared by every item
    items: tuple[WorkItem, ...]

    @property
    def kind(self) -> str:
        """The generator kind shared by every item (or :data:`sgid.sample.COPY`)."""
        return self.items[0].sample.kind

    @property
    def samples(self) -> list[Sample]:
        return [item.sample for item in self.items]

    @property
    def wanted(self) -> list[WorkItem]:
        return [item for item in self.items if item.wanted]


# -- tasks: what engines hand to workers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Generate these batches; results come back for the wanted items only."""

    index: int
    batches: tuple[Batch, ...]

    @property
    def items(self) -> int:
        return sum(len(b.wanted) for b in self.batches)


@dataclass(frozen=True)
class CaptionSource:
    relpath: str
    path: Path
    sha256: str  # the file the driver read; a worker refuses a changed one
    seed: int


@dataclass(frozen=True)
class CaptionTask:
    """BLIP captions and CLIP similarities for one fixed group of sources (results: relpath -> captions)."""

    index: int
    sources: tuple[CaptionSource, ...]

    @property
    def items(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class ScoreRequest:
    index: int  # the sample's position in the plan
    path: Path
    sha256: str
    text: str


@dataclass(frozen=True)
class ScoreTask:
    """The CLIP similarity of captions chosen from elsewhere, one image and one caption per model call."""

    index: int
    requests: tuple[ScoreRequest, ...]

    @property
    def items(self) -> int:
        return len(self.requests)


@dataclass(frozen=True)
class Calibration:
    """Run ``task`` twice on one worker and time both runs (the first loads models and warms up); the results
    are the second run's, then one :class:`Timing`. ``--dry-run`` estimates a run's time from it."""

    task: Shard | CaptionTask | ScoreTask

    @property
    def items(self) -> int:
        return self.task.items


@dataclass(frozen=True)
class Timing:
    first: float  # seconds, models loaded and warmed up
    second: float  # seconds, steady state
    items: int


Task = Shard | CaptionTask | ScoreTask | Calibration


def chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def shards_of(layout: Layout, work: dict[int, Batch]) -> list[Shard]:
    """The shards holding the batches with work (``work``: batch index -> batch), in layout order."""
    grouped: dict[int, list[Batch]] = {}
    for index in sorted(work):
        grouped.setdefault(layout.shard_of[index], []).append(work[index])
    return [Shard(index, tuple(batches)) for index, batches in grouped.items()]


def caption_groups(sources: Sequence[Source], size: int, wanted: Callable[[Source], bool]) -> Iterator[list[Source]]:
    """Fixed groups of ``size`` over the full sorted source list that hold at least one wanted source."""
    for group in chunks(sources, size):
        if any(wanted(s) for s in group):
            yield group
