"""Augmentation methods, registered by name: the ``--method`` value is the registry key."""

from sgid.methods import sgid as _sgid  # noqa: F401  (registers "sgid")
from sgid.methods.base import METHODS, Method, MethodContext

__all__ = ["METHODS", "Method", "MethodContext"]
