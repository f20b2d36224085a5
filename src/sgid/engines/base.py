"""The engine interface and the ``ENGINES`` registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sgid.registry import Registry

if TYPE_CHECKING:
    from sgid.config import AugmentConfig
    from sgid.execute import Worker, WorkerSpec
    from sgid.plan import Task

#: Receives every result of every task, in the driver: as a task yields them (local) or when it ends (ray);
#: tasks in any order.
Sink = Callable[[Any], None]


class Engine:
    """Runs tasks on workers that load their models once.

    The lifecycle is ``check`` (class method, with the options only: before any model loads), ``start``,
    any number of ``run`` calls, ``close``. ``run`` returns when every task's results went to ``sink``; a
    task may run more than once (a retried or restarted worker), so the sink ignores what is already done.

    Signals are the driver's business (:mod:`sgid.interrupt`): once ``interrupt.stop_requested()`` is true,
    ``run`` hands over the results that are finished and returns without starting more work; the driver then
    writes the manifests and stops.
    """

    name = "engine"

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    @classmethod
    def check(cls, config: AugmentConfig) -> None:
        """Refuse options this engine cannot use, in one line (called when the config is built)."""

    @property
    def workers(self) -> int:
        """How many workers run tasks at once."""
        return 1

    @property
    def device(self) -> str:
        """The device workers compute on (``--device``, or what the engine chose for them)."""
        return self.config.device

    @property
    def needs_local_models(self) -> bool:
        """True when the driver's own models do the work (they are loaded before any work starts)."""
        return False

    def start(self, spec: WorkerSpec, driver: Worker) -> None:
        """Get workers ready. ``driver`` is the driver process's own worker (models loaded there)."""

    def run(self, tasks: Sequence[Task], sink: Sink) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers (and a cluster the engine started)."""

    def describe(self) -> str:
        return f"{self.name} engine, {self.workers} worker{'s' if self.workers != 1 else ''}"


ENGINES: Registry[type[Engine]] = Registry("engine")
