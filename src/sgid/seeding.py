"""Per-item seeds.

Every random choice is seeded from the run seed and the item it concerns, never from a shared stream, so an
item's result does not depend on the batch it lands in, on the batch size, or on what ran before it.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and any identifying parts (relative path, k, purpose).

    >>> derive_seed(0, "cat/1.jpg", 0, "generate") == derive_seed(0, "cat/1.jpg", 0, "generate")
    True
    >>> derive_seed(0, "cat/1.jpg", 0, "generate") != derive_seed(0, "cat/1.jpg", 1, "generate")
    True
    """
    text = "\x1f".join([str(int(run_seed)), *(str(p) for p in parts)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed``.

    Noise is always drawn on the CPU (and moved to the device) so the same seed gives the same images on
    any device, as diffusers recommends for reproducibility.
    """
    del device
    return torch.Generator("cpu").manual_seed(int(seed))
