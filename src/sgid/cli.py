"""The ``sgid`` command line. Bad input gives one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys
from collections.abc import Sequence

from sgid import __version__, interrupt
from sgid.commands import command_modules
from sgid.errors import DISK_FULL, SgidError, is_disk_full
from sgid.progress import end_lines


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is a one-line :class:`SgidError` instead of usage text and exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SgidError(f"{self.prog}: {message} (see {self.prog} --help)")

    def format_help(self) -> str:
        """Help is plain text: the reStructuredText of docstrings used as descriptions is dropped."""
        return re.sub(r":\w+:`([^`]*)`", r"\1", super().format_help()).replace("``", "")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="sgid",
        description="Semantic-guided generative image augmentation (SGID) and its honest evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"sgid {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name in command_modules():
        importlib.import_module(f"sgid.commands.{name}").register(subparsers)
    return parser


#: file-system errors about a path (permissions, a file where a folder should be, a name too long, a read-only
#: file system): the commands check what they can up front; one found later is still one line, exit 2
PATH_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENOENT,
        errno.ENAMETOOLONG,
        errno.EROFS,
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 2 a problem the user can fix (one line), 1 no space left to write
    (one line; rerun to resume), 130/143 stopped by SIGINT/SIGTERM (one line; rerun to resume)."""
    try:
        with interrupt.handlers():
            args = build_parser().parse_args(argv)
            return int(args.run(args) or 0)
    except SgidError as exc:
        end_lines()  # a full disk or a bad file found mid-run: the line starts on a line of its own
        lines = [f"sgid: error: {exc}", *(f"  - {line}" for line in exc.details)]
        print("\n".join(lines), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno in PATH_ERRNOS:  # a path the user gave or the files in it: one line, like any bad input
            end_lines()
            names = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
            print(f"sgid: error: {exc.strerror or exc}{': ' + names if names else ''}", file=sys.stderr)
            return 2
        if not is_disk_full(exc):
            raise
        # a store that knows what it kept says so itself (DiskFullError); anything else writes whole files only
        end_lines()
        where = f" on {exc.filename}" if exc.filename else ""
        print(f"sgid: error: no space left{where} ({DISK_FULL.get(exc.errno or 0)}); rerun to resume", file=sys.stderr)
        return 1
    except interrupt.Interrupted as exc:
        end_lines()
        print(f"sgid: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        end_lines()  # close any progress bar first: the line below starts on a line of its own
        print("sgid: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
