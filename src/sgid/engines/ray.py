"""The ``ray`` engine: every GPU of a machine or of a Ray cluster, through Ray Data.

The tasks of a run become a Ray dataset (one row per task) and go through ``map_batches`` over an actor
class that builds one :class:`~sgid.execute.Worker` (its models loaded once) per actor:
``compute=ray.data.ActorPoolStrategy(size=--workers)``, ``num_gpus=--gpus-per-worker`` per actor (fractions
put several workers on one GPU). Actors return each task's results (image bytes and manifest rows) as one
pickled value; the driver's writer commits them, so OUT needs no shared file system and a task that Ray
retries (an actor killed and restarted) can never write an image twice. The inputs (INPUT, ``--pool``,
``--concepts``, ``--lora``, local model folders) must be readable at the same paths on every node.

``--ray-address`` joins a running cluster (``ray start --head`` …); otherwise a local Ray is started with
the machine's CPU count, and at least one CPU more than its workers use (Ray Data's reads need one; two 1-CPU
actors on a 2-CPU machine with ``num_cpus=2`` hang) and shut down at the end. In a process where Ray is
already initialised, that Ray is used and left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sgid import interrupt
from sgid.engines.base import ENGINES, Engine, Sink
from sgid.errors import SgidError, require

if TYPE_CHECKING:
    from sgid.config import AugmentConfig
    from sgid.execute import Worker, WorkerSpec
    from sgid.plan import Task

#: The Ray versions this engine is tested with (the ``ray`` extra pins the same range).
TESTED = ">=2.60,<2.61"


@dataclass(frozen=True)
class _Failure:
    """A user-fixable error raised on a worker (e.g. a model that cannot load), sent back as a result."""

    message: str


class _RayWorker:
    """The actor class: one Worker per actor; each call runs the tasks of one Ray Data batch."""

    def __init__(self, spec: WorkerSpec, threads: int) -> None:
        import torch

        from sgid.execute import Worker

        # Ray gives a 1-CPU actor OMP_NUM_THREADS=1; a CPU reduction split over another number of threads
        # rounds differently, so CPU actors use the driver's intra-op thread count to make its bytes.
        if not (spec.device or "").startswith("cuda"):
            torch.set_num_threads(threads)
        self.worker = Worker(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        results = []
        for blob in batch["task"]:
            try:
                value: Any = list(self.worker.run(pickle.loads(blob)))
            except SgidError as exc:
                value = _Failure(str(exc))
            results.append(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        return {"results": np.array(results, dtype=object)}


@ENGINES.register("ray")
class RayEngine(Engine):
    name = "ray"

    def __init__(self, config: AugmentConfig) -> None:
        super().__init__(config)
        self._workers = config.workers or 1
        self._gpus_per_worker = 0.0
        self._owns_ray = False
        self._spec: WorkerSpec | None = None

    @classmethod
    def check(cls, config: AugmentConfig) -> None:
        require("ray.data", "ray")
        if config.device != "auto" and not config.device.startswith("cuda") and config.gpus_per_worker:
            raise SgidError(f"--gpus-per-worker {config.gpus_per_worker} with --device {config.device}")

    @property
    def workers(self) -> int:
        return self._workers

    def start(self, spec: WorkerSpec, driver: Worker) -> None:
        ray = require("ray", "ray")
        c = self.config
        if not ray.is_initialized():
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # no C++ log lines on the user's terminal
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.ERROR,
            }
            if not c.ray_address:
                options["num_cpus"] = max(os.cpu_count() or 1, (c.workers or 1) + 1)  # one spare for Ray Data
            with _quiet_stderr("Set ray log level from environment variable"):
                ray.init(address=c.ray_address, **options)
            self._owns_ray = True
        _quiet_ray_data()
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_worker = c.gpus_per_worker
        if per_worker is None:
            per_worker = 1.0 if gpus and (c.device == "auto" or c.device.startswith("cuda")) else 0.0
        if per_worker and not gpus:
            self.close()
            raise SgidError(f"--gpus-per-worker {per_worker:g}, but the Ray cluster has no GPUs; leave it out")
        self._gpus_per_worker = per_worker
        self._workers = c.workers or (max(1, int(gpus // per_worker)) if per_worker else 1)
        device = "cuda" if per_worker else ("cpu" if c.device == "auto" else c.device)
        self._spec = replace(spec, device=device)

    @property
    def device(self) -> str:
        return self._spec.device or self.config.device if self._spec is not None else self.config.device

    def run(self, tasks: Sequence[Task], sink: Sink) -> None:
        if not tasks:
            return
        import ray.data
        import torch

        assert self._spec is not None, "start() first"
        items = [{"task": pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)} for task in tasks]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _RayWorker,
            fn_constructor_args=(self._spec, torch.get_num_threads()),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(self._workers, len(items))),
            num_cpus=1,
            num_gpus=self._gpus_per_worker or None,
        )
        with interrupt.raising():  # a signal drops the tasks in flight at once; what came back is committed
            for row in dataset.iter_rows():
                value = pickle.loads(row["results"])
                if isinstance(value, _Failure):
                    raise SgidError(value.message)
                for result in value:
                    sink(result)

    def close(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    def describe(self) -> str:
        gpus = f", {self._gpus_per_worker:g} GPU each" if self._gpus_per_worker else ""
        return f"ray engine, {self._workers} worker{'s' if self._workers != 1 else ''}{gpus}"


@contextlib.contextmanager
def _quiet_stderr(noise: str) -> Iterator[None]:
    """Run the block with file descriptor 2 captured; pass on every line but Ray's own ``noise`` line (Ray's
    C++ core writes to the descriptor, not to ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if noise not in line:
                    sys.stderr.write(line)


def _quiet_ray_data() -> None:
    """No Ray Data progress bars or per-dataset logs: sgid shows its own progress."""
    import ray.data

    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
