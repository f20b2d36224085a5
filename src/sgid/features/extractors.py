"""Image-feature extractors (``--features``) and the CLIP text embedder.

An extractor maps images to an (N, D) float32 array and names itself (``identity``) so cached features of one
model are never served for another:

* ``clip``: the scorer's unit-norm CLIP image embeddings (the paper's similarity space, §3.1 and §4.4);
* ``inception``: 2048-d pool features of Inception-v3 from a local weights file (FID's standard features).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from sgid.errors import MissingDependencyError, SgidError, need, reason
from sgid.registry import Registry


class FeatureExtractor(Protocol):
    """Images to an (N, D) float32 array; ``identity`` changes whenever the numbers would."""

    identity: str

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class ImageEmbedder(Protocol):
    """Image files to an (N, D) array (what filters and metrics are given)."""

    def __call__(self, paths: Sequence[Path]) -> np.ndarray: ...


class TextEmbedder(Protocol):
    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


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


@dataclass(eq=False)
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

    model: Any  # the network, in eval mode on ``device``
    identity: str  # which weights (their sha256), for the feature cache
    fid_network: bool  # FID's own network (else torchvision's)
    device: str = "cpu"
    batch_size: int = 32

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
                f"--inception-weights {path} does not fit torchvision's inception_v3 ({reason(exc)})"
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
            f"--inception-weights {path} is not a readable weights file ({reason(exc, typed=True)})"
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
