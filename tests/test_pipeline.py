"""pipeline.dataset_features: the training split's augmented views stacked after each photo's own features."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.data.flickr8k import load_flickr8k
from captioner.encoders.augment import PhotoView
from captioner.encoders.features import extract_features
from captioner.encoders.runtime import OnnxEncoder
from captioner.pipeline import dataset_features


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from conftest_helpers import write_tiny_flickr8k

    return load_flickr8k(write_tiny_flickr8k(tmp_path_factory.mktemp("flickr") / "f", n_train=4, n_dev=2))


@pytest.fixture(scope="module")
def encoder(tiny_encoder_onnx):
    return OnnxEncoder(tiny_encoder_onnx, threads=1)


def test_the_augmented_split_maps_to_the_photo_its_mirror_and_its_views(dataset, encoder, tmp_path):
    features = dataset_features(
        dataset, encoder, tmp_path, ["train", "dev"], progress=False, augment_split="train", views=2
    )
    train, dev = dataset.available("train"), dataset.available("dev")
    F = encoder.feature_size
    assert all(features[n].shape == (4, F) for n in train) and all(features[n].shape == (F,) for n in dev)
    root = tmp_path / "features" / encoder.name
    for k in (1, 2):  # rows 2.. are PhotoView k's cache, in the split's order
        cached = extract_features(
            train, dataset.image_dir, encoder, root / f"view{k}-train", progress=False, view=PhotoView(k)
        )
        np.testing.assert_array_equal(np.stack([features[n][1 + k] for n in train]), cached)
    rows = np.stack([features[train[0]][v] for v in range(4)])
    assert len({tuple(np.round(r[:8], 5)) for r in rows}) == 4  # four different views of one photo


def test_views_without_the_mirror_and_no_augmentation(dataset, encoder, tmp_path):
    F = encoder.feature_size
    train = dataset.available("train")
    only_views = dataset_features(
        dataset, encoder, tmp_path, ["train"], progress=False, augment_split="train", flip=False, views=1
    )
    assert all(only_views[n].shape == (2, F) for n in train)
    plain = dataset_features(
        dataset, encoder, tmp_path, ["train"], progress=False, augment_split="train", flip=False
    )
    assert all(plain[n].shape == (F,) for n in train)
    np.testing.assert_array_equal(plain[train[0]], only_views[train[0]][0])
