"""One module per ``sgid`` subcommand, each with ``register(subparsers)`` and ``run(args) -> int``.

Modules here are discovered automatically (sorted by name). They import only argparse-level things at import
time; heavy imports (torch, diffusers) happen inside ``run``.
"""

from __future__ import annotations

import pkgutil


def command_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
