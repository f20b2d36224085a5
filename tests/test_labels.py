"""Label texts are names, not codes (issue 10, point 1): the paper's datasets keep torchvision's class names, and
``sgid augment`` warns once when label texts look like codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST, make_image_folder
from sgid.dataset import code_like_labels, label_code_warning, read_label_names, scan


def fake_flowers102(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A six-image Flowers102 in torchvision's layout (jpg/, imagelabels.mat, setid.mat); the md5 check of the
    real files is bypassed, everything else is torchvision's own loader."""
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    for image_id in range(1, 7):
        pixels = np.full((8, 8, 3), image_id * 40, np.uint8)
        Image.fromarray(pixels).save(base / "jpg" / f"image_{image_id:05d}.jpg")
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 2, 77, 1, 77, 3]])})  # 1-based class numbers
    splits = {"trnid": [[1, 2]], "valid": [[3, 5]], "tstid": [[4, 6]]}
    savemat(base / "setid.mat", {name: np.array(ids) for name, ids in splits.items()})
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)


def test_flowers102_keeps_its_class_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sgid.evaluate.data import export_image_folder
    from sgid.evaluate.datasets import load_dataset

    fake_flowers102(tmp_path / "data", monkeypatch)
    data = load_dataset("flowers102", tmp_path / "data")
    assert len(data.classes) == 102
    assert data.classes[:3] == ("pink primrose", "hard-leaved pocket orchid", "canterbury bells")
    assert data.classes[76] == "passion flower"
    assert [ex.key for ex in data.train] == [
        "pink primrose/train_000000.png",
        "hard-leaved pocket orchid/train_000001.png",
    ]
    assert [data.classes[ex.label] for ex in data.val] == ["passion flower", "passion flower"]
    assert [data.classes[ex.label] for ex in data.test] == ["pink primrose", "canterbury bells"]
    # exported for sgid augment, the folders carry the names, so prompts, filters and zero-shot use them
    export_image_folder(data.train, tmp_path / "train")
    listing = scan(tmp_path / "train")
    assert listing.labels == {
        "hard-leaved pocket orchid": "hard-leaved pocket orchid",
        "pink primrose": "pink primrose",
    }
    assert label_code_warning(listing.labels) is None


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stanford_cars", "flowers102", "oxford_pets", "dtd"])
def test_every_torchvision_dataset_uses_its_own_class_names(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever torchvision names a dataset's classes is what sgid uses (folder-safe: '/' becomes '_')."""
    import torchvision.datasets as tvd

    from sgid.evaluate.datasets import DATASETS

    class Fake:
        classes = ["Ram C/V Cargo Van Minivan 2012", "pink primrose"]

        def __init__(self, root: str, download: bool, **split) -> None:  # type: ignore[no-untyped-def]
            assert download is False
            self._labels = [0, 1]

        def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
            return Image.new("RGB", (4, 4)), self._labels[index]

    for factory in ("CIFAR10", "CIFAR100", "StanfordCars", "Flowers102", "OxfordIIITPet", "DTD"):
        monkeypatch.setattr(tvd, factory, Fake)
    data = DATASETS.get(name)(tmp_path)
    assert data.classes == ("Ram C_V Cargo Van Minivan 2012", "pink primrose")


def test_code_like_labels() -> None:
    labels = {
        "class_001": "class 001",
        "n01440764": "n01440764",
        "7": "7",
        "cls-3": "cls-3",
        "001.Black_footed_Albatross": "001.Black footed Albatross",
        "pink_primrose": "pink primrose",
        "class_a": "class a",
        "b52": "b52",
    }
    assert code_like_labels(labels) == ["7", "class 001", "cls-3", "n01440764"]
    warning = label_code_warning(labels)
    assert warning is not None and "\n" not in warning
    assert warning.startswith("4 of 8 label texts look like codes ('7', 'class 001', 'cls-3', …)")
    assert "--label-names" in warning
    assert label_code_warning({"a": "pink primrose"}) is None


def test_augment_warns_once_about_code_labels(tmp_path: Path, cache_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from sgid.pipeline import augment

    source = make_image_folder(tmp_path / "in", {"class_001": 1, "n01440764": 1})
    options = {**FAST, "quiet": False}
    augment(source, tmp_path / "out", method="boomerang", cache_dir=cache_dir, **options)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "look like codes" in line]
    assert warnings == [
        "sgid: warning: 2 of 2 label texts look like codes ('class 001', 'n01440764'), so prompts read "
        "'A picture of a class 001'; give the real names with --label-names FILE "
        '(CSV \'folder,label\' or JSON {"folder": "label"})'
    ]
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"class_001": "tench", "n01440764": "goldfish"}))
    assert label_code_warning(scan(source, read_label_names(names)).labels) is None
