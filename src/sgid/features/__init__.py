"""Image features for the filters and the metrics: extracted once, in batches, and cached on disk.

* :mod:`sgid.features.extractors`: the ``--features`` extractors (CLIP, Inception) and the CLIP text embedder;
* :mod:`sgid.features.store`: :class:`FeatureStore` (files to features, batched, deduplicated) over the SQLite
  :class:`FeatureCache` keyed by content and extractor;
* :mod:`sgid.features.run_models`: the CLIP model of the commands that read a run, chosen from their runtime
  options (:class:`ClipOptions`) and the run's own models, loaded once.
"""

from sgid.features.extractors import (
    FEATURES,
    ClipImageFeatures,
    ClipTexts,
    ExtractorOptions,
    FeatureExtractor,
    ImageEmbedder,
    InceptionFeatures,
    TextEmbedder,
    build_extractor,
    rowwise_cosine,
)
from sgid.features.run_models import (
    ClipChoice,
    ClipModels,
    ClipOptions,
    RunClip,
    choose_clip,
    load_clip,
    open_run_clip,
)
from sgid.features.store import FEATURE_CACHE_FILE, FeatureCache, FeatureStore

__all__ = [
    "FEATURES",
    "FEATURE_CACHE_FILE",
    "ClipChoice",
    "ClipImageFeatures",
    "ClipModels",
    "ClipOptions",
    "ClipTexts",
    "ExtractorOptions",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureStore",
    "ImageEmbedder",
    "InceptionFeatures",
    "RunClip",
    "TextEmbedder",
    "build_extractor",
    "choose_clip",
    "load_clip",
    "open_run_clip",
    "rowwise_cosine",
]
