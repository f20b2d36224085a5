"""Installed package versions, recorded next to every output (run.json, results.json)."""

from __future__ import annotations

import platform
from collections.abc import Iterable

CORE = ("sgid", "torch", "torchvision", "diffusers", "transformers", "safetensors", "pillow", "numpy")


def package_versions(names: Iterable[str] = CORE) -> dict[str, str]:
    """``{"python": ..., name: version}`` for each installed package of ``names`` (missing ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
