"""The feature store shared by filters and metrics: batched, deduplicated, cached by content and extractor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import noise_image
from sgid.errors import SgidError
from sgid.features import ExtractorOptions, FeatureCache, FeatureStore, InceptionFeatures


class MeanColour:
    """A stand-in extractor: the mean RGB of each image; counts what it is asked to do."""

    def __init__(self, identity: str = "mean-colour:v1") -> None:
        self.identity = identity
        self.batches: list[int] = []

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.batches.append(len(images))
        return np.array([np.asarray(image, np.float32).mean(axis=(0, 1)) for image in images])


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(5):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        noise_image(i).save(path)
        paths.append(path)
    return paths


def test_features_are_extracted_in_batches_and_identical_files_once(images: list[Path], tmp_path: Path) -> None:
    duplicate = tmp_path / "img" / "copy.png"
    duplicate.write_bytes(images[0].read_bytes())
    extractor = MeanColour()
    store = FeatureStore(extractor, batch_size=2)
    features = store([*images, duplicate])
    assert features.shape == (6, 3)
    np.testing.assert_array_equal(features[0], features[5])
    assert extractor.batches == [2, 2, 1] and store.computed == 5


def test_a_second_store_on_the_same_cache_file_computes_nothing(images: list[Path], tmp_path: Path) -> None:
    first = FeatureStore(MeanColour(), FeatureCache(tmp_path / "features.sqlite"))
    expected = first(images)
    extractor = MeanColour()
    second = FeatureStore(extractor, FeatureCache(tmp_path / "features.sqlite"))
    np.testing.assert_array_equal(second(images), expected)
    assert extractor.batches == [] and (second.computed, second.reused) == (0, 5)


def test_another_extractor_identity_is_never_served_from_the_cache(images: list[Path], tmp_path: Path) -> None:
    FeatureStore(MeanColour("a"), FeatureCache(tmp_path / "features.sqlite"))(images)
    other = FeatureStore(MeanColour("b"), FeatureCache(tmp_path / "features.sqlite"))
    other(images)
    assert other.computed == 5


def test_the_cache_is_keyed_by_content_not_path(images: list[Path], tmp_path: Path) -> None:
    store = FeatureStore(MeanColour(), FeatureCache(tmp_path / "features.sqlite"))
    before = store(images[:1])
    noise_image(99).save(images[0])  # same path, new content
    assert not np.array_equal(store(images[:1]), before) and store.computed == 2


def test_unreadable_images_are_named(images: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "img" / "broken.png"
    broken.write_bytes(b"not a png")
    store = FeatureStore(MeanColour())
    features, errors = store.extract([images[0], broken, tmp_path / "missing.png"])
    assert set(errors) == {1, 2} and np.isnan(features[1:]).all() and np.isfinite(features[0]).all()
    with pytest.raises(SgidError, match="cannot read image .*broken.png"):
        store([broken])


def test_inception_features_need_weights_on_disk(tmp_path: Path) -> None:
    with pytest.raises(SgidError, match="needs Inception-v3 weights on disk"):
        InceptionFeatures.check(ExtractorOptions())
    with pytest.raises(SgidError, match="no such file"):
        InceptionFeatures.check(ExtractorOptions(inception_weights=tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(SgidError, match="not a readable weights file"):
        InceptionFeatures.from_weights(tmp_path / "junk.pth")


@pytest.mark.slow
def test_inception_features_from_torchvision_weights(images: list[Path], tmp_path: Path) -> None:
    import torch
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    torch.save(Inception3(init_weights=True).state_dict(), tmp_path / "inception.pth")
    extractor = InceptionFeatures.from_weights(tmp_path / "inception.pth")
    assert extractor.identity.startswith("inception-torchvision:")
    features = FeatureStore(extractor)(images[:2])
    assert features.shape == (2, 2048) and np.isfinite(features).all()
