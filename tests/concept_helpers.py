"""Helpers shared by the learn-concepts tests (textual inversion and LoRA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def learned_folder(factory: pytest.TempPathFactory, name: str, dataset: Path, settings: Any, cache_dir: Path) -> Path:
    """A finished ``learn_concepts`` run on the tiny model in a new temporary folder (shared read-only)."""
    from sgid.concepts import learn_concepts

    out = factory.mktemp(name) / "concepts"
    learn_concepts(dataset, out, settings, models="tiny", cache_dir=cache_dir, quiet=True)
    return out


def count_steps(monkeypatch: pytest.MonkeyPatch, trainer: type[Any], fail_at: int | None = None) -> list[int]:
    """Count ``trainer.step`` calls (the step each starts from); with ``fail_at``, that call raises
    KeyboardInterrupt, as a run killed during that step."""
    calls: list[int] = []
    original = trainer.step

    def step(self: Any) -> float:
        calls.append(self.step_done)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt(f"test: interrupted at step {len(calls)}")
        return float(original(self))

    monkeypatch.setattr(trainer, "step", step)
    return calls
