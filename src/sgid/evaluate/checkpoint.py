"""Saved classifiers: ``classifier.safetensors`` (the state dict) + ``classifier.json`` (how to rebuild it).

Used by ``sgid evaluate --save-models`` and by anything that needs a classifier trained on real data (the
confidence filter)::

    model, meta = load_classifier(Path("out/models/digits/baseline/seed0"))
    probs = predict_proba(model, meta, [image1, image2])  # (2, num_classes), rows sum to 1

Loading rebuilds the architecture by backbone name with random weights (never downloading anything) and then
loads the saved state dict, so a fine-tuned ViT or CLIP classifier reloads offline.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from sgid import interrupt
from sgid.errors import ModelLoadError
from sgid.evaluate.backbones import build_backbone
from sgid.evaluate.transforms import eval_transform, rgb
from sgid.manifest import json_number
from sgid.runstore import atomic_write

WEIGHTS = "classifier.safetensors"
META = "classifier.json"
FORMAT_VERSION = 1


def save_classifier(
    model: nn.Module,
    directory: Path,
    *,
    backbone: str,
    classes: list[str],
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> None:
    """Write ``directory/classifier.safetensors`` and ``directory/classifier.json``.

    Architecture overrides recorded by :func:`~sgid.evaluate.backbones.build_backbone` (``model.sgid_build``)
    are stored too, so tiny test configurations rebuild exactly.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build = dict(getattr(model, "sgid_build", {}) or {})
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "backbone": backbone,
        "classes": list(classes),
        "num_classes": len(classes),
        "image_size": int(image_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "arch": build.get("arch", {}),
    }
    weights_tmp = directory / f".{WEIGHTS}.tmp"
    with interrupt.writing(weights_tmp):
        try:
            try:
                save_model(model, str(weights_tmp))
            except SafetensorError as exc:  # an OSError inside Rust: give it back its errno (a full disk)
                found = re.search(r"os error (\d+)", str(exc))
                if found is None:
                    raise
                number = int(found.group(1))
                raise OSError(number, os.strerror(number), str(weights_tmp)) from None
            weights_tmp.replace(directory / WEIGHTS)
        except BaseException:
            weights_tmp.unlink(missing_ok=True)
            raise
    atomic_write(directory / META, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))


def load_classifier(directory: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the saved classifier (eval mode, on ``device``) and return it with its metadata."""
    from safetensors.torch import load_model

    directory = Path(directory)
    meta_path, weights_path = directory / META, directory / WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise ModelLoadError(f"no saved classifier in {directory}: {path.name} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        backbone, classes, image_size = meta["backbone"], meta["classes"], int(meta["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{meta_path} is not a classifier description ({exc})") from None
    problem = _meta_problem(meta)
    if problem is not None:
        raise ModelLoadError(f"{meta_path} is not a classifier description sgid evaluate wrote ({problem})")
    try:
        model = build_backbone(backbone, len(classes), image_size=image_size, pretrained=False, arch=meta.get("arch"))
    except (ValueError, TypeError, KeyError) as exc:  # an "arch" edited by hand
        raise ModelLoadError(f"{meta_path}: its arch does not describe a {backbone} ({exc})") from None
    try:
        load_model(model, str(weights_path), strict=True, device=str(device))
    except Exception as exc:  # noqa: BLE001 - any mismatch means the files do not belong together
        raise ModelLoadError(f"{weights_path} does not match backbone {backbone!r} ({type(exc).__name__})") from None
    return model.to(device).eval(), meta


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a classifier.json, field by field (a hand-edited one was a traceback at prediction)."""
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format version {meta.get('format_version')!r}; this sgid reads {FORMAT_VERSION}"
    classes = meta["classes"]
    if not isinstance(meta["backbone"], str):
        return "backbone is not a name"
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes is not a list of class names"
    if len(set(classes)) != len(classes):
        return "a class is named twice"
    if meta.get("num_classes", len(classes)) != len(classes):
        return "num_classes differs from the classes listed"
    if not 1 <= int(meta["image_size"]) <= 4096:
        return f"image_size {meta['image_size']} is not between 1 and 4096"
    for name in ("mean", "std"):
        values = meta.get(name)
        if not (isinstance(values, list) and len(values) == 3 and all(json_number(v) for v in values)):
            return f"{name} is not three numbers"
    if not all(v > 0 for v in meta["std"]):
        return "std has a value that is not above 0"
    if not isinstance(meta.get("arch", {}), dict):
        return "arch is not an object"
    return None


@torch.no_grad()
def predict_proba(
    model: nn.Module, meta: dict[str, Any], images: list[Image.Image], batch_size: int = 64
) -> np.ndarray:
    """Class probabilities, shape ``(len(images), num_classes)``, with the evaluation transform."""
    transform = eval_transform(int(meta["image_size"]), meta["mean"], meta["std"])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([transform(rgb(image)) for image in images[start : start + batch_size]]).to(device)
        chunks.append(torch.softmax(model(batch).float(), dim=1).cpu().numpy())
    model.train(was_training)
    if not chunks:
        return np.zeros((0, int(meta["num_classes"])), dtype=np.float32)
    return np.concatenate(chunks)
