"""One module per ``sgid`` subcommand, each with ``register(subparsers)`` and ``run(args) -> int``.

Command modules import only argparse-level things at import time; heavy imports happen inside ``run``.
"""

COMMANDS = ("augment",)
