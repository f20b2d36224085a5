"""Image features for the filters and the metrics: extracted once, in batches, and cached on disk.

An extractor maps images to an (N, D) float32 array and names itself (``identity``) so cached features of one
model are never served for another:

* ``clip``: the scorer's unit-norm CLIP image embeddings (the paper's similarity space, §3.1 and §4.4);
* ``inception``: 2048-d pool features of Inception-v3 from a local weights file (FID's standard features).

:class:`FeatureStore` turns file paths into features. The key of a cached vector is the sha256 of the image
file's bytes plus the extractor identity, so the same images filtered twice, or filtered and then measured,
are read from ``<cache dir>/features.sqlite`` instead of being run through the model again.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from sgid.errors import MissingDependencyError, SgidError, need
from sgid.images import ImageError, load_rgb, sha256_bytes
from sgid.progress import bar
from sgid.registry import Registry

FEATURE_CACHE_FILE = "features.sqlite"


class FeatureExtractor(Protocol):
    """Images to an (N, D) float32 array; ``identity`` changes whenever the numbers would."""

    identity: str

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class ImageEmbedder(Protocol):
    """Image files to an (N, D) array (what filters and metrics are given)."""

    def __call__(self, paths: Sequence[Path]) -> np.ndarray: ...


class TextEmbedder(Protocol):
    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


# -- extractors ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractorOptions:
    """What building an extractor may need; the CLIP scorer is loaded only when asked for."""

    clip: Callable[[], tuple[Any, str]] | None = None  # () -> (ClipScorer, identity of the CLIP model)
    inception_weights: Path | None = None
    device: str = "cpu"


class ClipImageFeatures:
    """Unit-norm CLIP image embeddings from :class:`sgid.stages.score.ClipScorer`."""

    help: ClassVar[str] = "CLIP image embeddings of the scorer (--scorer / --models)"

    def __init__(self, scorer: Any, model_identity: str) -> None:
        self.scorer = scorer
        self.identity = f"clip:{model_identity}"

    @classmethod
    def check(cls, options: ExtractorOptions) -> None:
        return None

    @classmethod
    def create(cls, options: ExtractorOptions) -> ClipImageFeatures:
        if options.clip is None:
            raise SgidError("CLIP features need a CLIP scorer")
        scorer, identity = options.clip()
        return cls(scorer, identity)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.scorer.image_embeddings(images).numpy().astype(np.float32, copy=False)


class InceptionFeatures:
    """2048-d pool features of Inception-v3, from weights the user has on disk (nothing is downloaded).

    Two weight files are understood, told apart by their classifier size:

    * FID's TensorFlow-ported network (``pt_inception-2015-12-05-6726825d.pth``, 1008 classes), run through
      torchmetrics' ``NoTrainInceptionV3`` exactly as torchmetrics' FID does (needs ``torch-fidelity``): FID
      values comparable with published ones;
    * torchvision's ``inception_v3`` ImageNet weights (1000 classes): Inception features, but FID values are
      comparable only with other runs using the same file.
    """

    help: ClassVar[str] = "Inception-v3 pool features (needs --inception-weights FILE)"
    FID_CLASSES = 1008
    IMAGE_SIZE = 299

    def __init__(self, model: Any, identity: str, fid_network: bool, device: str = "cpu", batch_size: int = 32) -> None:
        self.model = model
        self.identity = identity
        self.fid_network = fid_network
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def check(cls, options: ExtractorOptions) -> None:
        weights = options.inception_weights
        if weights is None:
            raise SgidError(
                "--features inception needs Inception-v3 weights on disk: pass --inception-weights FILE "
                "(FID's pt_inception-2015-12-05-6726825d.pth or torchvision's inception_v3 .pth), "
                "or use --features clip"
            )
        if not Path(weights).is_file():
            raise SgidError(f"--inception-weights {weights}: no such file")

    @classmethod
    def create(cls, options: ExtractorOptions) -> InceptionFeatures:
        cls.check(options)
        weights = need(options.inception_weights, "--features inception needs --inception-weights FILE")
        return cls.from_weights(Path(weights), options.device)

    @classmethod
    def from_weights(cls, path: Path, device: str = "cpu") -> InceptionFeatures:
        import torch

        state = _load_state_dict(path)
        fc = state.get("fc.weight")
        if fc is None:
            raise SgidError(f"--inception-weights {path} holds no Inception-v3 state dict (no fc.weight)")
        digest = _file_sha256(path)
        if fc.shape[0] == cls.FID_CLASSES:
            try:
                from torchmetrics.image.fid import NoTrainInceptionV3

                model = NoTrainInceptionV3(
                    name="inception-v3-compat",
                    features_list=["2048"],
                    feature_extractor_weights_path=str(path),
                )
            except ModuleNotFoundError:
                raise MissingDependencyError(
                    f"{path} is FID's Inception network, which runs through torch-fidelity: pip install torch-fidelity"
                ) from None
            return cls(model.to(device).eval(), f"inception-fid:{digest}", True, device)
        from torchvision.models.inception import Inception3

        network = Inception3(
            num_classes=int(fc.shape[0]),
            aux_logits=any(k.startswith("AuxLogits") for k in state),
            transform_input=True,
            init_weights=False,
        )
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise SgidError(
                f"--inception-weights {path} does not fit torchvision's inception_v3 ({str(exc).splitlines()[0]})"
            ) from None
        network.fc = torch.nn.Identity()  # the 2048-d average-pooled features
        return cls(network.to(device).eval(), f"inception-torchvision:{digest}", False, device)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch
        from torchvision.transforms.functional import normalize, pil_to_tensor, resize

        parts = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                if self.fid_network:  # uint8 in, resized to 299 by the network itself
                    size = (self.IMAGE_SIZE, self.IMAGE_SIZE)
                    batch = torch.stack(
                        [pil_to_tensor(image.resize(size, Image.Resampling.BILINEAR)) for image in chunk]
                    )
                else:  # torchvision's preprocessing for its ImageNet weights
                    batch = torch.stack(
                        [
                            normalize(
                                resize(pil_to_tensor(image), [self.IMAGE_SIZE, self.IMAGE_SIZE], antialias=True).float()
                                / 255.0,
                                [0.485, 0.456, 0.406],
                                [0.229, 0.224, 0.225],
                            )
                            for image in chunk
                        ]
                    )
                parts.append(self.model(batch.to(self.device)).float().cpu().numpy())
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 2048), np.float32)


def _load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as exc:  # noqa: BLE001 - any failure means "not a weights file we can read"
        raise SgidError(
            f"--inception-weights {path} is not a readable weights file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SgidError(f"--inception-weights {path} holds no state dict")
    return state


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: ``--features`` values.
FEATURES: Registry[type[ClipImageFeatures] | type[InceptionFeatures]] = Registry("feature extractor")
FEATURES.add("clip", ClipImageFeatures)
FEATURES.add("inception", InceptionFeatures)


def build_extractor(name: str, options: ExtractorOptions) -> FeatureExtractor:
    return FEATURES.get(name).create(options)


# -- the CLIP scorer -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipChoice:
    """Which CLIP model to load, where, in which precision (resolved before anything is loaded)."""

    ref: Any  # sgid.models.loading.ModelRef
    tiny: bool
    device: Any  # torch.device
    dtype: Any  # torch.dtype

    @property
    def identity(self) -> str:
        return f"{self.ref.name}@{self.ref.path}:{str(self.dtype).removeprefix('torch.')}"


def choose_clip(
    run_models: Mapping[str, str],
    run_preset: str | None,
    *,
    models: str | None = None,
    scorer: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: Path | None = None,
) -> ClipChoice:
    """The CLIP model for a command reading a run: ``--scorer``, else the ``--models`` preset's, else the one
    the run itself used (so a ``--models tiny`` run is filtered with tiny CLIP without saying so again)."""
    from sgid.models.loading import default_cache_dir, resolve_device, resolve_dtype, resolve_models

    if scorer is None and models is None:
        scorer = run_models.get("scorer")
    resolved_device = resolve_device(device or "auto")  # checked before resolve_models builds tiny models
    resolved_dtype = resolve_dtype(dtype or "auto", resolved_device)
    choice = resolve_models(
        models or run_preset or "default", cache_dir=cache_dir or default_cache_dir(), scorer=scorer
    )
    return ClipChoice(choice.scorer, choice.scorer.name.startswith("tiny:"), resolved_device, resolved_dtype)


@dataclass(frozen=True)
class ClipOptions:
    """The runtime options of the commands that read a run with CLIP (``sgid filter``, ``sgid metrics``):
    ``--models --scorer --device --dtype --cache-dir``, ``--no-cache`` and ``--quiet``, as one object."""

    models: str | None = None
    scorer: str | None = None
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | Path | None = None
    cache: bool = True
    quiet: bool = False

    @classmethod
    def from_args(cls, args: Any) -> ClipOptions:
        """From a command's parsed flags (see :func:`sgid.commands.augment.add_model_options`)."""
        return cls(**{f: getattr(args, f) for f in cls.__dataclass_fields__})

    def keywords(self) -> dict[str, Any]:
        """As the keyword arguments of ``filter_run`` and ``metrics_run``."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass
class RunClip:
    """The CLIP model a command reading a run uses, and the feature cache it shares with other commands."""

    choice: ClipChoice
    cache: FeatureCache
    tiny_note: str | None  # the tiny-models warning, when they are used (also recorded in reports)


def open_run_clip(run_models: Mapping[str, str], run_preset: str | None, options: ClipOptions) -> RunClip:
    """Choose the CLIP model (see :func:`choose_clip`), say so when it is the tiny one, open the cache."""
    from sgid.models.loading import TINY_WARNING, default_cache_dir
    from sgid.progress import note

    o = options
    root = Path(o.cache_dir) if o.cache_dir else default_cache_dir()
    choice = choose_clip(
        run_models, run_preset, models=o.models, scorer=o.scorer, device=o.device, dtype=o.dtype, cache_dir=root
    )
    tiny_note = TINY_WARNING if choice.tiny else None
    if tiny_note:
        note(tiny_note, o.quiet)
    return RunClip(choice, FeatureCache(root / FEATURE_CACHE_FILE if o.cache else None), tiny_note)


def load_clip(choice: ClipChoice) -> tuple[Any, str]:
    """(ClipScorer, identity) for ``choice``; loaded once per process."""
    from sgid.models.loading import load_scorer
    from sgid.stages.score import ClipScorer

    model, processor = load_scorer(choice.ref, choice.device, choice.dtype)
    return ClipScorer(model, processor), choice.identity


class ClipModels:
    """CLIP, loaded on first use: cached image features of files and text embeddings."""

    def __init__(self, choice: ClipChoice, cache: FeatureCache | None = None, *, quiet: bool = True) -> None:
        self.choice = choice
        self.cache = cache or FeatureCache(None)
        self.quiet = quiet
        self._loaded: tuple[Any, str] | None = None
        self._images: FeatureStore | None = None
        self._texts: ClipTexts | None = None

    def scorer(self) -> tuple[Any, str]:
        """(ClipScorer, model identity)."""
        if self._loaded is None:
            self._loaded = load_clip(self.choice)
        return self._loaded

    @property
    def images(self) -> FeatureStore:
        if self._images is None:
            self._images = FeatureStore(
                ClipImageFeatures(*self.scorer()), self.cache, quiet=self.quiet, label="CLIP features"
            )
        return self._images

    @property
    def texts(self) -> ClipTexts:
        if self._texts is None:
            self._texts = ClipTexts(self.scorer()[0])
        return self._texts

    def feature_counts(self) -> tuple[int, int]:
        """(computed, reused) image features so far."""
        return (self._images.computed, self._images.reused) if self._images else (0, 0)


# -- text ----------------------------------------------------------------------------------------------------
class ClipTexts:
    """Unit-norm CLIP text embeddings as numpy, each distinct text encoded once per call."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, 0), np.float32)
        embedded = self.scorer.text_embeddings(unique).numpy().astype(np.float32, copy=False)
        index = {text: i for i, text in enumerate(unique)}
        return embedded[[index[text] for text in texts]]


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``a[i]`` and ``b[i]`` (float64; NaN where a row is NaN or zero)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, (a * b).sum(axis=1) / norms, np.nan)


# -- cache and store -----------------------------------------------------------------------------------------
class FeatureCache:
    """Vectors by (extractor identity, image sha256) in SQLite: one file, safe across processes and kill -9.

    ``FeatureCache(None)`` keeps nothing (``--no-cache``).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS features (extractor TEXT NOT NULL, sha256 TEXT NOT NULL, "
                "dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (extractor, sha256))"
            )

    def get_many(self, extractor: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        if self._db is None:
            return found
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT sha256, dim, vector FROM features WHERE extractor = ? AND sha256 IN ({marks})",
                [extractor, *chunk],
            )
            for sha, dim, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape[0] == dim:
                    found[sha] = vector
        return found

    def put_many(self, extractor: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store all in one transaction: after a crash either all of them are there or none."""
        if self._db is None or not vectors:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO features (extractor, sha256, dim, vector) VALUES (?, ?, ?, ?)",
                [
                    (extractor, sha, int(v.shape[0]), np.ascontiguousarray(v, np.float32).tobytes())
                    for sha, v in vectors.items()
                ],
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class FeatureStore:
    """Paths to features: hash each file, serve known hashes from memory or the cache, extract the rest in
    batches of ``batch_size`` and cache them. ``computed`` / ``reused`` count distinct images (reports)."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        cache: FeatureCache | None = None,
        *,
        batch_size: int = 32,
        quiet: bool = True,
        label: str = "features",
    ) -> None:
        self.extractor = extractor
        self.cache = cache or FeatureCache(None)
        self.batch_size = batch_size
        self.quiet = quiet
        self.label = label
        self._memo: dict[str, np.ndarray] = {}
        self._computed: set[str] = set()  # distinct images run through the extractor by this store
        self._reused: set[str] = set()  # distinct images served from the cache instead

    @property
    def computed(self) -> int:
        return len(self._computed)

    @property
    def reused(self) -> int:
        return len(self._reused)

    @property
    def identity(self) -> str:
        return self.extractor.identity

    def __call__(self, paths: Sequence[Path]) -> np.ndarray:
        """(N, D) features; an unreadable image is a one-line error naming it."""
        features, errors = self.extract(paths)
        if errors:
            index, reason = next(iter(errors.items()))
            raise SgidError(f"cannot read image {paths[index]}: {reason}")
        return features

    def extract(self, paths: Sequence[Path]) -> tuple[np.ndarray, dict[int, str]]:
        """(N, D) features (NaN rows for unreadable images) and {index: reason} for those images."""
        errors: dict[int, str] = {}
        hashes: list[str | None] = []
        for i, path in enumerate(paths):
            try:
                hashes.append(sha256_bytes(Path(path).read_bytes()))
            except OSError as exc:
                hashes.append(None)
                errors[i] = f"unreadable file: {exc.strerror or exc}"
        wanted = [h for h in dict.fromkeys(hashes) if h is not None and h not in self._memo]
        self._memo.update(self.cache.get_many(self.identity, wanted))
        missing: dict[str, Path] = {}
        for path, sha in zip(paths, hashes, strict=True):
            if sha is not None and sha not in self._memo:
                missing.setdefault(sha, Path(path))
        errors.update(self._compute(missing, hashes))
        self._reused.update(
            h for i, h in enumerate(hashes) if h is not None and i not in errors and h not in self._computed
        )
        return self._assemble(hashes, errors), errors

    def _compute(self, missing: dict[str, Path], hashes: Sequence[str | None]) -> dict[int, str]:
        """Extract the missing features batch by batch; returns errors for images that cannot be decoded."""
        failed: dict[str, str] = {}
        items = list(missing.items())
        progress = bar(len(items), self.label, "img", self.quiet or not items)
        for start in range(0, len(items), self.batch_size):
            batch: list[tuple[str, Image.Image]] = []
            for sha, path in items[start : start + self.batch_size]:
                try:
                    batch.append((sha, load_rgb(path).image))
                except ImageError as exc:
                    failed[sha] = str(exc)
            if batch:
                vectors = self.extractor([image for _, image in batch])
                fresh = {sha: np.asarray(v, np.float32) for (sha, _), v in zip(batch, vectors, strict=True)}
                self.cache.put_many(self.identity, fresh)
                self._memo.update(fresh)
                self._computed.update(fresh)
            progress.update(len(items[start : start + self.batch_size]))
        progress.close()
        return {i: failed[h] for i, h in enumerate(hashes) if h is not None and h in failed}

    def _assemble(self, hashes: Sequence[str | None], errors: Mapping[int, str]) -> np.ndarray:
        good = [self._memo[h] for i, h in enumerate(hashes) if h is not None and i not in errors]
        dim = good[0].shape[0] if good else 0
        out = np.full((len(hashes), dim), np.nan, dtype=np.float32)
        for i, sha in enumerate(hashes):
            if sha is not None and i not in errors:
                out[i] = self._memo[sha]
        return out
