"""The ``local`` engine: every task in this process, one after another, on the driver's own models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sgid import interrupt
from sgid.engines.base import ENGINES, Engine, Sink
from sgid.errors import SgidError

if TYPE_CHECKING:
    from sgid.config import AugmentConfig
    from sgid.execute import Worker, WorkerSpec
    from sgid.plan import Task


@ENGINES.register("local")
class LocalEngine(Engine):
    name = "local"

    @classmethod
    def check(cls, config: AugmentConfig) -> None:
        if config.workers not in (None, 1):
            raise SgidError(f"--engine local runs one worker, not --workers {config.workers}; use --engine ray")
        for flag, value in (("--gpus-per-worker", config.gpus_per_worker), ("--ray-address", config.ray_address)):
            if value is not None:
                raise SgidError(f"{flag} is an option of --engine ray")

    @property
    def needs_local_models(self) -> bool:
        return True

    def start(self, spec: WorkerSpec, driver: Worker) -> None:
        self._worker = driver

    def run(self, tasks: Sequence[Task], sink: Sink) -> None:
        for task in tasks:
            if interrupt.stop_requested():
                return  # the driver says why (sgid.interrupt); tasks not started are made by a rerun
            for result in self._worker.run(task):
                sink(result)
