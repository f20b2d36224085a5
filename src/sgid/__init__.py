"""sgid: semantic-guided generative image augmentation (SGID, Li et al., AAAI 2024) and its evaluation.

Python API (mirrors the command line)::

    import sgid
    summary = sgid.augment("data/train", "data/train-sgid", models="tiny", noise=0.5)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "augment"]


def augment(input_dir: Any, out_dir: Any, **options: Any) -> Any:
    """Augment a labelled image folder; see :func:`sgid.pipeline.augment`."""
    from sgid.pipeline import augment as _augment

    return _augment(input_dir, out_dir, **options)
