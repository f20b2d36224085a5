"""Name → object registries. The registry key is the value users type on the command line.

>>> METHODS = Registry("method")
>>> @METHODS.register("sgid")
... class Sgid: ...
>>> METHODS.get("sgid") is Sgid
True
>>> METHODS.get("nope")
Traceback (most recent call last):
sgid.errors.SgidError: unknown method 'nope'; choose from: sgid
>>> METHODS.get("sgdi")
Traceback (most recent call last):
sgid.errors.SgidError: unknown method 'sgdi'; choose from: sgid; did you mean 'sgid'?
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from sgid.errors import SgidError

T = TypeVar("T")


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name a misspelt ``name`` most likely meant (``difflib``'s closest match), or None.

    >>> closest("sgdi", ["sgid", "text2img"]), closest("xyz", ["sgid", "text2img"])
    ('sgid', None)
    """
    found = difflib.get_close_matches(name, list(choices), n=1)
    return found[0] if found else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'NAME'?"`` for the end of a one-line error about an unknown name, or ``""``."""
    found = closest(name, choices)
    return f"; did you mean {found!r}?" if found else ""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            names = self.names()
            raise SgidError(
                f"unknown {self.kind} {name!r}; choose from: {', '.join(names)}{did_you_mean(str(name), names)}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
