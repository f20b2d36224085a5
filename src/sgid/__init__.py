"""sgid: semantic-guided generative image augmentation (SGID, Li et al., AAAI 2024) and its evaluation.

Python API (mirrors the command line: every ``sgid augment`` flag is a keyword, with ``_`` for ``-``)::

    import sgid
    summary = sgid.augment("data/train", "data/train-sgid", models="tiny", noise=0.5, no_cache=True)
    print(summary.line())

``sgid.augment`` is :func:`sgid.pipeline.augment`, imported on first use so that ``import sgid`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "augment"]

if TYPE_CHECKING:
    from sgid.pipeline import augment


def __getattr__(name: str) -> Any:
    if name == "augment":
        from sgid.pipeline import augment

        return augment
    raise AttributeError(f"module 'sgid' has no attribute {name!r}")
