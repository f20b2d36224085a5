"""Per-item seeds.

Every random choice is seeded from the run seed and the item it concerns, never from a shared stream, so an
item's result does not depend on the batch it lands in, on the batch size, or on what ran before it.
torch is imported where a generator is made, so planning code uses the seeds without loading it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and any identifying parts (relative path, k, purpose).

    >>> derive_seed(0, "cat/1.jpg", 0, "generate") == derive_seed(0, "cat/1.jpg", 0, "generate")
    True
    >>> derive_seed(0, "cat/1.jpg", 0, "generate") != derive_seed(0, "cat/1.jpg", 1, "generate")
    True
    """
    text = "\x1f".join([str(int(run_seed)), *(str(p) for p in parts)])
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed``.

    Noise is always drawn on the CPU (and moved to the device) so the same seed gives the same images on
    any device, as diffusers recommends for reproducibility.
    """
    import torch

    del device
    return torch.Generator("cpu").manual_seed(int(seed))


@contextmanager
def global_rngs(seed: int) -> Iterator[None]:
    """Within the block, python's and torch's global (CPU) generators start from ``seed``; both are restored
    afterwards. For library code that draws only from them (torchvision's RandAugment and CutMix, timm's
    RandomErasing), so one item's random choices depend on its own seed alone.

    >>> import torch
    >>> with global_rngs(7):
    ...     a = (random.random(), float(torch.rand(())))
    >>> with global_rngs(7):
    ...     b = (random.random(), float(torch.rand(())))
    >>> a == b
    True
    """
    import torch

    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(int(seed))
        torch.manual_seed(int(seed))
        try:
            yield
        finally:
            random.setstate(state)
