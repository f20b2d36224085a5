"""Helpers for the hostile-condition tests: real ``sgid`` subprocesses, and what a stopped run must look like."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

import zygote
from conftest import make_image_folder
from sgid.manifest import read_run
from sgid.pipeline import augment
from sgid.runstore import JOURNAL, FolderLock

#: ``sgid augment`` options of the hostile tests: the tiny models, two images per source, batches of two.
AUGMENT = {"models": "tiny", "steps": 8, "multiplier": 2, "batch_size": 2, "quiet": True}


def uninterrupted(root: Path, cache_dir: Path) -> tuple[Path, Path]:
    """(input folder, its uninterrupted run with ``AUGMENT``): 2 classes x 3 images, 12 images in 6 batches."""
    source = make_image_folder(root / "in", {"a": 3, "b": 3}, size=(32, 24))
    augment(source, root / "reference", cache_dir=cache_dir, **AUGMENT)
    return source, root / "reference"


def cli_options(options: dict[str, Any]) -> list[str]:
    """``AUGMENT``-style options as command-line flags."""
    flags: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def sgid_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, SGID_CACHE=str(cache_dir), HF_HUB_OFFLINE="1", **extra)


def start_sgid(
    *args: str | Path,
    cache_dir: Path,
    preexec_fn: Callable[[], None] | None = None,
    rlimits: dict[str, tuple[int, int]] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes] | zygote.Child:
    """``python -m sgid ARGS`` in a process of its own, stderr piped, SIGINT handled as in a terminal (a test runner
    started in the background has SIGINT ignored, and sgid keeps an ignored signal ignored); ``rlimits``: resource
    limits it starts with (``{"RLIMIT_FSIZE": (soft, hard)}``).

    Forked from a warm zygote (tests/zygote.py: no 8 s of imports per command) unless ``preexec_fn`` or another
    ``Popen`` option is given or the environment needs a fresh interpreter: then a real ``subprocess.Popen``."""
    env = sgid_env(cache_dir)
    if preexec_fn is None and not popen:
        child = zygote.start([str(a) for a in args], env, rlimits=rlimits)
        if child is not None:
            return child

    def prepare() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for name, limits in (rlimits or {}).items():
            resource.setrlimit(getattr(resource, name), limits)
        if preexec_fn is not None:
            preexec_fn()

    command = [sys.executable, "-m", "sgid", *map(str, args)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, preexec_fn=prepare, **popen)


def run_sgid(*args: str | Path, cache_dir: Path, timeout: float = 300, **popen: Any) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m sgid ARGS``."""
    process = start_sgid(*args, cache_dir=cache_dir, **popen)
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr.decode("utf-8", "replace")


def journal_rows(out: Path) -> int:
    """Whole journal lines (images and output errors)."""
    path = out / JOURNAL
    return path.read_bytes().count(b"\n") if path.exists() else 0


def journaled_images(out: Path) -> set[str]:
    """The file names of the images the journal records as finished."""
    path = out / JOURNAL
    entries = [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
    return {e["row"]["file_name"] for e in entries if e["kind"] == "row"}


def wait_for(process: subprocess.Popen[bytes] | zygote.Child, ready: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"exited early ({process.returncode}): {process.stderr.read().decode()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.02)


def outputs(out: Path) -> dict[str, bytes]:
    """Every file a user sees in OUT (hidden ones aside); run.json by its identity only (it names OUT)."""
    found = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }
    found["run.json"] = json.loads(found["run.json"])["identity_sha256"].encode()
    return found


def temporaries(folder: Path) -> list[str]:
    """Temporary files sgid writes before renaming into place (none may be left behind)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if ".tmp" in p.name)


def assert_consistent(out: Path, *, manifest: bool = True) -> int:
    """A stopped run: no temporary file, the lock free, on disk exactly the journaled images, each of them whole,
    and (``manifest``) metadata.jsonl listing exactly them. Returns the image count.

    On a full disk the manifests may not fit: then they are the last ones written (or none), and the next run
    writes them."""
    assert temporaries(out) == []
    FolderLock(out).acquire("still locked").release()
    journaled = journaled_images(out)
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == journaled
    for name in journaled:
        with Image.open(out / name) as image:
            image.load()  # a truncated PNG fails here
    if manifest:
        assert {row.file_name for row in read_run(out).rows} == journaled
    return len(journaled)
