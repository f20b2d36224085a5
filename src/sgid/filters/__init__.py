"""Quality filters over a generated dataset (``sgid filter``), registered by name in :data:`FILTERS`.

=============  ============================================================================================
``label``      CLIP zero-shot over "a photo of a {label}"; reject another predicted class (paper app. B (1))
``prompt``     CLIP image-prompt similarity; reject below the label's mean (paper app. B (2))
``original``   CLIP similarity to the source image; reject below the label's mean (paper app. B (3))
``threshold``  CLIP similarity to the source image; reject below ``--threshold`` (000)
``best_of_k``  keep the ``--keep`` best augmentations of each source by ``--rank-by``'s score (000)
``realfake``   out-of-fold real-vs-generated classifier; keep the images it takes for real (000)
``confidence`` reject images a classifier trained on the real data confidently puts in another class
``human``      reject what people rejected in ``sgid review`` (``--review-db``), or passed over for a best-of-K pick
=============  ============================================================================================

Filters compose in the order given; see :mod:`sgid.filters.chain`.
"""

from sgid.filters import best_of_k as _best_of_k  # noqa: F401  (registers best_of_k)
from sgid.filters import clip as _clip  # noqa: F401  (registers label, prompt, original, threshold)
from sgid.filters import confidence as _confidence  # noqa: F401  (registers confidence)
from sgid.filters import human as _human  # noqa: F401  (registers human)
from sgid.filters import realfake as _realfake  # noqa: F401  (registers realfake)
from sgid.filters.api import FilterSummary, filter_run, parse_filter_names
from sgid.filters.base import FILTERS, Filter, FilterInput, FilterOptions, FilterResult, Scores, Verdict
from sgid.filters.chain import ChainResult, run_chain

__all__ = [
    "FILTERS",
    "ChainResult",
    "Filter",
    "FilterInput",
    "FilterOptions",
    "FilterResult",
    "FilterSummary",
    "Scores",
    "Verdict",
    "filter_run",
    "parse_filter_names",
    "run_chain",
]
