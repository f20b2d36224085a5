"""Engines run the tasks of a plan on workers and hand the results back to the driver, which alone writes.

``--engine`` is the registry key: ``local`` (this process) and ``ray`` (Ray actors on this machine or a
cluster). Every engine takes the same tasks and the same :class:`~sgid.execute.WorkerSpec`, so the output
folder is the same whichever ran it.
"""

from sgid.engines import local as _local  # noqa: F401  (each import registers its engine)
from sgid.engines import ray as _ray  # noqa: F401
from sgid.engines.base import ENGINES, Engine, Sink

__all__ = ["ENGINES", "Engine", "Sink"]
