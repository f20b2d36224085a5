"""Small builders for the evaluate tests: in-memory examples and hand-made ``sgid augment`` output folders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sgid.evaluate.data import ArrayImage, EvalData, Example

TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8}
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def solid(color: tuple[int, int, int], size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), color, dtype=np.uint8)


def pattern(label: int, index: int, size: int = 32) -> np.ndarray:
    """A learnable image: a class-specific bright stripe plus a little seeded noise."""
    rng = np.random.default_rng(1000 * label + index)
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    start = (label * size // 4) % size
    image[start : start + size // 4, :, label % 3] = 230
    return image


def real_examples(counts: Sequence[int], size: int = 32) -> tuple[Example, ...]:
    """``counts[c]`` real examples of class c, keyed "c<c>/<i>.png"."""
    return tuple(
        Example(key=f"c{label}/{i}.png", label=label, load=ArrayImage(pattern(label, i, size)))
        for label, count in enumerate(counts)
        for i in range(count)
    )


def generated_examples(real: Sequence[Example], per_image: int = 1, size: int = 32) -> tuple[Example, ...]:
    """``per_image`` generated examples for every real one, with ``source`` set to the real key."""
    return tuple(
        Example(
            key=f"gen:{ex.key}#{k}",
            label=ex.label,
            source=ex.key,
            generated=True,
            load=ArrayImage(pattern(ex.label, 500 + 10 * i + k, size)),
        )
        for i, ex in enumerate(real)
        for k in range(per_image)
    )


def tiny_data(
    counts: Sequence[int] = (6, 6), test_counts: Sequence[int] = (4, 4), per_image: int = 1, name: str = "tiny"
) -> EvalData:
    classes = tuple(f"c{i}" for i in range(len(counts)))
    train = real_examples(counts)
    test = tuple(
        Example(key=f"test/{ex.key}", label=ex.label, load=ArrayImage(pattern(ex.label, 900 + i)))
        for i, ex in enumerate(real_examples(test_counts))
    )
    return EvalData(name, classes, train, test, generated=generated_examples(train, per_image) if per_image else ())


def write_folder(root: Path, counts: dict[str, int], size: int = 32, offset: int = 0) -> Path:
    """root/<class>/<i>.png with learnable patterns."""
    for label, (name, count) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(pattern(label, offset + i, size)).save(root / name / f"{i}.png")
    return root


def write_generated(
    out: Path,
    train: Path,
    per_image: int = 1,
    *,
    originals: bool = False,
    source_prefix: str = "",
    sha256: bool = True,
) -> Path:
    """A hand-made ``sgid augment`` output folder for the images of ``train`` (metadata.jsonl + run.json); each
    row records its source's ``source_sha256`` as sgid augment does (unless ``sha256`` is False)."""
    rows = []
    for class_dir in sorted(p for p in train.iterdir() if p.is_dir()):
        (out / class_dir.name).mkdir(parents=True, exist_ok=True)
        for image_path in sorted(class_dir.iterdir()):
            source = f"{source_prefix}{class_dir.name}/{image_path.name}"
            digest = {"source_sha256": hashlib.sha256(image_path.read_bytes()).hexdigest()} if sha256 else {}
            image = np.asarray(Image.open(image_path).convert("RGB"))
            if originals:
                name = f"{class_dir.name}/{image_path.stem}.png"
                Image.fromarray(image).save(out / name)
                rows.append(
                    {
                        "file_name": name,
                        "label": class_dir.name,
                        "source": source,
                        **digest,
                        "k": None,
                        "method": "original",
                    }
                )
            for k in range(per_image):
                name = f"{class_dir.name}/{image_path.stem}_sgid_{k}.png"
                Image.fromarray(255 - image).save(out / name)
                rows.append(
                    {
                        "file_name": name,
                        "label": class_dir.name,
                        "source": source,
                        **digest,
                        "k": k,
                        "method": "sgid",
                        "guidance_scale": 1.1,
                    }
                )
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "run.json").write_text(json.dumps({"config": {"input_dir": str(train)}}), encoding="utf-8")
    return out
