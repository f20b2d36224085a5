"""``--safety-checker`` with ``--on-flagged drop|retry`` (docs/reliability.md, "Safety checker").

A stand-in for Stable Diffusion's safety checker flags about three images in four, by a hash of the decoded image, so
the same image is always flagged the same way. A flagged (blacked-out) image is never written as a training image:
``drop`` lists it in errors.jsonl; ``retry`` makes it again with the next derived seed, up to ``--flagged-tries``
tries in all, and records every flagged seed (in the row of the image finally kept, or in the error row).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image

from conftest import make_image_folder
from sgid.cli import main
from sgid.execute import FLAGGED
from sgid.manifest import read_run
from sgid.pipeline import augment
from sgid.seeding import derive_seed

OPTIONS: dict[str, Any] = {"models": "tiny", "steps": 4, "multiplier": 2, "batch_size": 4, "quiet": True}
TRIES = 3


def flags(image: torch.Tensor) -> bool:
    """The stand-in's verdict: a pure function of the decoded image, true for about three in four."""
    return hashlib.sha256(image.detach().float().cpu().numpy().tobytes()).digest()[0] < 192


@pytest.fixture
def checker(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Replace the safety checker's verdict (the tiny one's random weights flag at random); returns every verdict."""
    verdicts: list[bool] = []

    def forward(self: Any, clip_input: torch.Tensor, images: Any) -> tuple[Any, list[bool]]:
        found = [flags(torch.as_tensor(np.asarray(image))) for image in images]
        for index, flagged in enumerate(found):
            if flagged:  # what the real checker does: a black image
                images[index] = (
                    torch.zeros_like(images[index]) if torch.is_tensor(images) else np.zeros_like(images[index])
                )
        verdicts.extend(found)
        return images, found

    monkeypatch.setattr(StableDiffusionSafetyChecker, "forward", forward)
    return verdicts


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("safety") / "in", {"a": 3, "b": 3})


def black(path: Path) -> bool:
    with Image.open(path) as image:
        return not np.asarray(image).any()


def test_flagged_images_are_dropped_or_made_again_and_every_flagged_seed_is_recorded(
    source: Path, tmp_path: Path, cache_dir: Path, checker: list[bool]
) -> None:
    augment(source, tmp_path / "drop", safety_checker=True, cache_dir=cache_dir, **OPTIONS)
    first_tries = len(checker)
    dropped = read_run(tmp_path / "drop")
    assert len(dropped.rows) + len(dropped.errors) == 12 and first_tries == 12
    assert [e.reason for e in dropped.errors] == [FLAGGED] * sum(checker)
    retry = {"on_flagged": "retry", "flagged_tries": TRIES}
    augment(source, tmp_path / "retry", safety_checker=True, cache_dir=cache_dir, **retry, **OPTIONS)
    run = read_run(tmp_path / "retry")
    # the first try is the drop run's: the same items are flagged, and only they are made again
    first = {(e.source, e.k) for e in dropped.errors}
    again = {(r.source, r.k) for r in run.rows if r["flagged_seeds"]} | {(e.source, e.k) for e in run.errors}
    assert again == first and len(run.rows) + len(run.errors) == 12
    assert any(r["flagged_seeds"] for r in run.rows) and run.errors  # both outcomes happen with this stand-in
    for row in run.rows:
        planned = derive_seed(0, row.source, row.k, "sgid", "generate")
        seeds = [planned] + [derive_seed(planned, "flagged", n) for n in range(1, TRIES)]
        tried = len(row["flagged_seeds"])
        assert row["flagged_seeds"] == seeds[:tried] and row["seed"] == seeds[tried] and row["on_flagged"] == "retry"
    for error in run.errors:
        planned = derive_seed(0, error.source, error.k, "sgid", "generate")
        seeds = [planned] + [derive_seed(planned, "flagged", n) for n in range(1, TRIES)]
        assert error["flagged_seeds"] == seeds
        assert (
            error.reason
            == f"the safety checker flagged every try (3 tries, seeds {', '.join(map(str, seeds))}); not kept"
        )
    for folder in (tmp_path / "drop", tmp_path / "retry"):  # never a flagged (black) training image
        assert not any(black(folder / row.file_name) for row in read_run(folder).rows)
    unflagged = {(r.source, r.k): r.file_name for r in dropped.rows}
    for row in run.rows:  # an image never flagged is the same in both runs
        if not row["flagged_seeds"]:
            assert (tmp_path / "retry" / row.file_name).read_bytes() == (
                tmp_path / "drop" / unflagged[(row.source, row.k)]
            ).read_bytes()


def test_retry_without_the_safety_checker_is_one_line(source: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["augment", str(source), "--out", str(tmp_path / "out"), "--models", "tiny", "--on-flagged", "retry"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "sgid: error: --on-flagged retry needs --safety-checker (without it nothing is flagged)"
    )
