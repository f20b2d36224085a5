"""The SGID paper's seven datasets through torchvision, from files the user already has (``download=False``).

============  ============================================  =========================================
name          torchvision class and splits                  expected under ``--data-root``
============  ============================================  =========================================
cifar10       CIFAR10 train / test                          cifar-10-batches-py/
cifar100      CIFAR100 train / test                         cifar-100-python/
caltech101    Caltech101; 30 train per class, rest test     caltech101/101_ObjectCategories/
stanford_cars StanfordCars train / test                     stanford_cars/
flowers102    Flowers102 train / val / test                 flowers-102/
oxford_pets   OxfordIIITPet trainval / test                 oxford-iiit-pet/
dtd           DTD train / val / test (partition 1)          dtd/
============  ============================================  =========================================

Class names are torchvision's own ("pink primrose", "Abyssinian", "AM General Hummer SUV 2000", …; Caltech101:
its category folders): they become the class folders of :func:`sgid.evaluate.data.export_image_folder`, hence
the label text of ``sgid augment``'s prompts, the label filter and the zero-shot row.

Caltech101 has no official split; the usual protocol (Fei-Fei et al.) of 30 training images per class with the
rest for testing is drawn once with a fixed seed. Example keys are ``"<class>/<split>_<index>.png"``;
:func:`sgid.evaluate.data.export_image_folder` writes the training split under exactly those names, so the
``source`` paths of an ``sgid augment`` run over that folder link back to these examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgid.errors import SgidError, reason
from sgid.evaluate.data import ArrayImage, DatasetImage, EvalData, Example
from sgid.registry import Registry

Loader = Callable[[Path], EvalData]
DATASETS: Registry[Loader] = Registry("dataset")
CALTECH_TRAIN_PER_CLASS = 30
CALTECH_SPLIT_SEED = 0


def _open(name: str, factory: Callable[..., Any], root: Path, **kwargs: Any) -> Any:
    try:
        return factory(root=str(root), download=False, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        raise SgidError(
            f"{name} is not under --data-root {root} ({reason(exc)}); "
            f"sgid never downloads datasets: put the files there (see sgid.evaluate.datasets) and retry"
        ) from None


def _labels(dataset: Any) -> list[int]:
    """Labels without decoding images. torchvision keeps them in different attributes per dataset."""
    for attr in ("targets", "y", "_labels"):
        if hasattr(dataset, attr):
            return [int(v) for v in getattr(dataset, attr)]
    if hasattr(dataset, "_samples"):
        return [int(target) for _, target in dataset._samples]
    raise SgidError(f"cannot read the labels of {type(dataset).__name__} with this torchvision version")


def _folder_safe(name: str) -> str:
    return str(name).replace("/", "_").replace("\\", "_").strip() or "_"


def _examples(
    dataset: Any, classes: Sequence[str], split: str, indices: Sequence[int] | None = None
) -> tuple[Example, ...]:
    labels = _labels(dataset)
    arrays = getattr(dataset, "data", None)
    in_memory = isinstance(arrays, np.ndarray) and arrays.ndim == 4  # CIFAR: (N, 32, 32, 3) uint8
    chosen = range(len(labels)) if indices is None else indices
    return tuple(
        Example(
            key=f"{classes[labels[i]]}/{split}_{i:06d}.png",
            label=labels[i],
            load=ArrayImage(arrays[i]) if in_memory else DatasetImage(dataset, i),  # type: ignore[index]
        )
        for i in chosen
    )


def _two_split(
    name: str,
    factory_name: str,
    train_kw: dict[str, Any],
    test_kw: dict[str, Any],
    val_kw: dict[str, Any] | None = None,
) -> Loader:
    def load(root: Path) -> EvalData:
        import torchvision.datasets as tvd

        factory = getattr(tvd, factory_name)
        train = _open(name, factory, root, **train_kw)
        test = _open(name, factory, root, **test_kw)
        classes = tuple(_folder_safe(c) for c in train.classes)
        val = _examples(_open(name, factory, root, **val_kw), classes, "val") if val_kw else ()
        return EvalData(name, classes, _examples(train, classes, "train"), _examples(test, classes, "test"), val)

    return load


def _load_caltech101(root: Path) -> EvalData:
    import torchvision.datasets as tvd

    dataset = _open("caltech101", tvd.Caltech101, root, target_type="category")
    classes = tuple(_folder_safe(c) for c in dataset.categories)
    labels = np.asarray(_labels(dataset))
    rng = np.random.default_rng(CALTECH_SPLIT_SEED)
    train_idx: list[int] = []
    for label in range(len(classes)):
        members = np.flatnonzero(labels == label)
        train_idx.extend(
            sorted(rng.choice(members, size=min(CALTECH_TRAIN_PER_CLASS, len(members) - 1), replace=False).tolist())
        )
    test_idx = sorted(set(range(len(labels))) - set(train_idx))
    return EvalData(
        "caltech101",
        classes,
        _examples(dataset, classes, "all", sorted(train_idx)),
        _examples(dataset, classes, "all", test_idx),
    )


DATASETS.add("cifar10", _two_split("cifar10", "CIFAR10", {"train": True}, {"train": False}))
DATASETS.add("cifar100", _two_split("cifar100", "CIFAR100", {"train": True}, {"train": False}))
DATASETS.add("caltech101", _load_caltech101)
DATASETS.add("stanford_cars", _two_split("stanford_cars", "StanfordCars", {"split": "train"}, {"split": "test"}))
DATASETS.add(
    "flowers102", _two_split("flowers102", "Flowers102", {"split": "train"}, {"split": "test"}, {"split": "val"})
)
DATASETS.add("oxford_pets", _two_split("oxford_pets", "OxfordIIITPet", {"split": "trainval"}, {"split": "test"}))
DATASETS.add("dtd", _two_split("dtd", "DTD", {"split": "train"}, {"split": "test"}, {"split": "val"}))


def load_dataset(name: str, root: Path) -> EvalData:
    """Dataset ``name`` from ``root`` (never downloaded); an unknown name lists the valid ones."""
    loader = DATASETS.get(name)
    if not Path(root).is_dir():
        raise SgidError(f"--data-root folder not found: {root}")
    return loader(Path(root))
