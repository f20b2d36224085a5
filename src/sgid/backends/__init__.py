"""Generator backends, one per model family, registered by name: the ``--backend`` value is the registry key.

==================  =========================================================================================
``base``            the contract: :class:`Backend`, :class:`Conditioning`, :func:`denoise`, the recipes
``sd``              ``sd``: Stable Diffusion 1.x/2.x
``sdxl``            ``sdxl``: Stable Diffusion XL (two text encoders, pooled embeddings, size conditioning)
``instruct``        ``instruct_pix2pix``: InstructPix2Pix (edits by instruction)
==================  =========================================================================================

``--sd-model`` picks the family from the checkpoint's configs (:func:`sgid.models.loading.detect_backend`);
``--backend NAME`` says it. Adding a backend is one module plus its import here (see ARCHITECTURE.md).
"""

from sgid.backends import instruct as _instruct  # noqa: F401  (each import registers its backend)
from sgid.backends import sd as _sd  # noqa: F401
from sgid.backends import sdxl as _sdxl  # noqa: F401
from sgid.backends.base import (
    BACKENDS,
    Backend,
    Conditioning,
    GenerationOutput,
    GenerationRequest,
    Guide,
    StepHook,
    denoise,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "Conditioning",
    "GenerationOutput",
    "GenerationRequest",
    "Guide",
    "StepHook",
    "denoise",
]
