"""The encoder's ImageNet head: one run gives features and class probabilities; files without it still work."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.encoders.export import add_imagenet_head, export_encoder
from captioner.encoders.imagenet import (
    IMAGENET_PROBS_OUTPUT,
    MAX_TAGS_TOP_K,
    NUM_CLASSES,
    class_names,
    select_tags,
    top_tags,
)
from captioner.encoders.images import preprocess
from captioner.encoders.runtime import OnnxEncoder
from captioner.errors import EncoderError
from conftest_helpers import make_photo


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    from captioner.encoders.registry import get_encoder_spec

    pre = get_encoder_spec("efficientnet_lite0").preprocessing
    return np.stack([preprocess(make_photo((80 + 8 * i, 64), seed=i), pre) for i in range(3)])


@pytest.fixture(scope="module")
def headless_onnx(tmp_path_factory):
    """A random-weight Lite0 exported the way files were before the head existed."""
    path = tmp_path_factory.mktemp("headless") / "lite0.onnx"
    return export_encoder("efficientnet_lite0", path, weights=None, with_class_probs=False)


def test_export_has_both_outputs_and_probabilities_sum_to_one(tiny_encoder_onnx, batch):
    encoder = OnnxEncoder(tiny_encoder_onnx, threads=1)
    assert encoder.has_imagenet_probs
    assert [o.name for o in encoder.session.get_outputs()] == ["features", IMAGENET_PROBS_OUTPUT]
    out = encoder.run_arrays(batch)
    assert out.features.shape == (3, 1280) and out.imagenet_probs.shape == (3, NUM_CLASSES)
    assert out.imagenet_probs.dtype == np.float32 and (out.imagenet_probs >= 0).all()
    np.testing.assert_allclose(out.imagenet_probs.sum(axis=1), 1.0, atol=1e-5)
    # The features of the two-output run are the ones encode() gives (used for training features).
    np.testing.assert_allclose(out.features, encoder.encode_arrays(batch), rtol=0, atol=1e-6)


def test_the_head_does_not_change_the_features(tiny_encoder_onnx, headless_onnx, batch):
    with_head = OnnxEncoder(tiny_encoder_onnx, threads=1).run_arrays(batch).features
    without = OnnxEncoder(headless_onnx, threads=1).run_arrays(batch).features
    np.testing.assert_allclose(with_head, without, rtol=0, atol=1e-5)


def test_an_encoder_without_the_head_still_works(headless_onnx, batch, photo_files):
    from PIL import Image

    encoder = OnnxEncoder(headless_onnx, threads=1)
    assert not encoder.has_imagenet_probs
    out = encoder.run_arrays(batch)
    assert out.imagenet_probs is None and out.features.shape == (3, 1280)
    empty = encoder.run([])
    assert empty.features.shape == (0, 1280) and empty.imagenet_probs is None
    assert encoder.run([Image.open(photo_files[0]).convert("RGB")]).imagenet_probs is None


def test_add_imagenet_head_keeps_the_features_bit_identical(headless_onnx, batch, tmp_path):
    out = add_imagenet_head(headless_onnx, tmp_path / "with_head.onnx")
    before = OnnxEncoder(headless_onnx, threads=1).run_arrays(batch)
    after = OnnxEncoder(out, threads=1).run_arrays(batch)
    assert np.array_equal(before.features, after.features)
    np.testing.assert_allclose(after.imagenet_probs.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(EncoderError, match="already has"):
        add_imagenet_head(out, tmp_path / "twice.onnx")


def test_class_names_are_the_1000_imagenet_classes_in_order():
    names = class_names()
    assert len(names) == NUM_CLASSES
    assert names[0] == "tench" and names[281] == "tabby" and names[285] == "Egyptian cat"
    assert names[967] == "espresso" and names[999] == "toilet tissue"


def test_top_tags_are_sorted_and_select_tags_cuts_them():
    probs = np.full((2, NUM_CLASSES), 0.0, np.float32)
    probs[0, [281, 282, 5]] = [0.6, 0.3, 0.1]
    probs[1, 967] = 1.0
    tags = top_tags(probs)
    assert len(tags[0]) == MAX_TAGS_TOP_K
    assert [(t.label, t.class_id) for t in tags[0][:3]] == [
        ("tabby", 281),
        ("tiger cat", 282),
        ("electric ray", 5),
    ]
    assert tags[1][0].label == "espresso" and tags[1][0].probability == 1.0
    assert [t.class_id for t in select_tags(tags[0], 5, 0.2)] == [281, 282]
    assert select_tags(tags[0], 0, 0.0) == ()
    assert len(select_tags(tags[0], 20, 0.0)) == 20
    with pytest.raises(ValueError, match="1000"):
        top_tags(np.zeros((1, 10)))


@pytest.mark.slow
def test_inception_v3_export_has_the_head(tmp_path):
    from captioner.encoders.registry import get_encoder_spec

    encoder = OnnxEncoder(export_encoder("inception_v3", tmp_path / "i.onnx", weights=None), threads=2)
    assert encoder.has_imagenet_probs
    pre = get_encoder_spec("inception_v3").preprocessing
    out = encoder.run_arrays(np.stack([preprocess(make_photo((120, 90), seed=1), pre)]))
    assert out.features.shape == (1, 2048) and out.imagenet_probs.shape == (1, NUM_CLASSES)
    np.testing.assert_allclose(out.imagenet_probs.sum(axis=1), 1.0, atol=1e-5)


def test_head_weights_reproduce_the_files_probabilities_from_its_features(
    tiny_encoder_onnx, headless_onnx, batch
):
    from captioner.encoders.imagenet import class_probabilities, class_synsets, head_weights

    out = OnnxEncoder(tiny_encoder_onnx, threads=1).run_arrays(batch)
    weight, bias = head_weights(tiny_encoder_onnx)
    assert weight.shape == (NUM_CLASSES, out.features.shape[1]) and bias.shape == (NUM_CLASSES,)
    np.testing.assert_allclose(class_probabilities(out.features, weight, bias), out.imagenet_probs, atol=1e-6)
    with pytest.raises(ValueError, match="no ImageNet head"):
        head_weights(headless_onnx)
    synsets = class_synsets()
    assert len(synsets) == NUM_CLASSES and synsets[281] == ("n02123045", ("tabby", "tabby cat"))
