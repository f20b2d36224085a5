"""Augmentation methods, registered by name: the ``--method`` value is the registry key.

``a+b`` chains methods: ``b`` is applied to the outputs of ``a`` (e.g. ``text2img+sgid``, paper §4.3).
"""

from sgid.methods import boomerang as _boomerang  # noqa: F401  (each import registers its method)
from sgid.methods import diverse_caption as _diverse_caption  # noqa: F401
from sgid.methods import instruct as _instruct  # noqa: F401
from sgid.methods import perturb as _perturb  # noqa: F401
from sgid.methods import retrieval as _retrieval  # noqa: F401
from sgid.methods import sgid as _sgid  # noqa: F401
from sgid.methods import text2img as _text2img  # noqa: F401
from sgid.methods.base import METHODS, Method, MethodContext, Services, SkipItem

__all__ = ["METHODS", "Method", "MethodContext", "Services", "SkipItem", "chain_parts"]


def chain_parts(method: str) -> list[str]:
    """``"text2img+sgid"`` -> ``["text2img", "sgid"]``, each checked against the registry."""
    parts = [p.strip() for p in method.split("+")]
    for part in parts:
        METHODS.get(part)
    return parts
