"""Zero-shot CLIP: classify test images by their similarity to "a photo of a {label}." (004's reference row).

No training and no randomness: one evaluation per dataset, shown as a reference row without a p-value. An
untrained model (``pretrained=False``, the tests' tiny CLIP) is initialised from seed 0, the seed its row records,
so its accuracy does not depend on what the process drew before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sgid.dataset import default_label
from sgid.errors import require
from sgid.evaluate.backbones import BACKBONES, build_backbone
from sgid.evaluate.data import Example
from sgid.evaluate.train import Accuracy, EvalSet, accuracy_of
from sgid.evaluate.transforms import eval_transform
from sgid.seeding import global_rngs

TEMPLATE = "a photo of a {}."
NAME = "zero_shot_clip"


@torch.no_grad()
def zero_shot_accuracy(
    classes: Sequence[str],
    test: Sequence[Example],
    *,
    image_size: int = 224,
    weights: str | None = None,
    arch: dict[str, Any] | None = None,
    pretrained: bool = True,
    device: str = "cpu",
    batch_size: int = 128,
) -> Accuracy:
    """Accuracy of CLIP ViT-B/32 (LAION-2B) on ``test`` with one text prompt per class."""
    open_clip = require("open_clip", "eval")
    spec = BACKBONES.get(NAME)
    with global_rngs(0):
        built = build_backbone(
            NAME, len(classes), image_size=image_size, pretrained=pretrained, weights=weights, arch=arch
        )
    model: Any = built.to(device).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    text = model.encode_text(tokenizer([TEMPLATE.format(default_label(c)) for c in classes]).to(device))
    text = text / text.norm(dim=-1, keepdim=True)
    loader = torch.utils.data.DataLoader(
        EvalSet(test, eval_transform(image_size, spec.mean, spec.std)), batch_size=batch_size
    )
    predictions = []
    for images, _ in loader:
        features = model.encode_image(images.to(device))
        features = features / features.norm(dim=-1, keepdim=True)
        predictions.append((features @ text.T).argmax(dim=1).cpu())
    predicted = torch.cat(predictions).numpy() if predictions else torch.zeros(0, dtype=torch.long).numpy()
    return accuracy_of(predicted, [ex.label for ex in test], len(classes))
