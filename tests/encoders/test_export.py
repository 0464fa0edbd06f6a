"""Encoder export: the ONNX file computes what the source framework computes, and describes itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.encoders.export import METADATA_KEY, export_encoder
from captioner.encoders.images import preprocess
from captioner.encoders.registry import ENCODERS, get_encoder_spec
from captioner.encoders.runtime import OnnxEncoder
from captioner.errors import EncoderError

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS}


def compare_lite(name: str, tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    """Export ``name`` with its ImageNet weights; ONNX == torch on real photos, and the torch head sees a cat."""
    import torch

    from captioner.encoders.efficientnet_lite import build_feature_model

    encoder = OnnxEncoder(export_encoder(name, tmp_path / f"{name}.onnx", weights="imagenet"), threads=2)
    spec = get_encoder_spec(name)
    assert encoder.name == name and encoder.feature_size == spec.feature_size
    batch = np.stack([preprocess(im, encoder.preprocessing) for im in photos.values()])
    onnx_features = encoder.encode_arrays(batch)
    model = build_feature_model(name, "imagenet")
    with torch.no_grad():
        torch_features = model(torch.from_numpy(batch))
        logits = model.backbone._fc(torch_features).numpy()
    diff = float(np.abs(onnx_features - torch_features.numpy()).max())
    print(f"{name}: max |onnx - torch| = {diff:.2e}, feature scale {np.abs(onnx_features).max():.2f}")
    assert onnx_features.shape == (len(photos), spec.feature_size)
    assert diff < 1e-3
    top = dict(zip(photos, logits.argmax(axis=1).tolist(), strict=True))
    print(f"{name}: top-1 ImageNet classes {top}")
    assert top["chelsea"] in CAT_CLASSES
    # Real weights: different photos give clearly different features.
    assert np.abs(onnx_features[0] - onnx_features[1]).max() > 0.1


def test_lite0_imagenet_export_matches_torch(tmp_path, photos):
    compare_lite("efficientnet_lite0", tmp_path, photos)


@pytest.mark.slow
def test_lite2_imagenet_export_matches_torch(tmp_path, photos):
    compare_lite("efficientnet_lite2", tmp_path, photos)


KERAS_REFERENCE = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from captioner.encoders.inception_v3 import build_feature_model

    model = build_feature_model(None, seed=0)
    features = model(np.load(sys.argv[1]), training=False)
    np.save(sys.argv[2], keras.ops.convert_to_numpy(features))
    """
)


@pytest.mark.slow
def test_inception_v3_export_matches_keras(tmp_path, photos):
    encoder = OnnxEncoder(
        export_encoder("inception_v3", tmp_path / "inception.onnx", weights=None), threads=2
    )
    assert encoder.name == "inception_v3" and encoder.feature_size == 2048
    assert encoder.preprocessing.layout == "NHWC" and encoder.preprocessing.size == 299
    batch = np.stack([preprocess(im, encoder.preprocessing) for im in photos.values()])
    assert batch.shape == (len(photos), 299, 299, 3)
    onnx_features = encoder.encode_arrays(batch)

    # The same seeded random-weight model, built fresh by Keras (torch backend) in another process.
    np.save(tmp_path / "batch.npy", batch)
    env = dict(os.environ, KERAS_BACKEND="torch")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", KERAS_REFERENCE, str(tmp_path / "batch.npy"), str(tmp_path / "keras.npy")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    keras_features = np.load(tmp_path / "keras.npy")
    assert keras_features.shape == onnx_features.shape == (len(photos), 2048)
    scale = float(np.abs(keras_features).max())
    rel = float(np.abs(onnx_features - keras_features).max()) / scale
    print(f"inception_v3: max |onnx - keras| / max |keras| = {rel:.2e} (scale {scale:.3g})")
    assert scale > 0
    assert rel < 1e-4


# -- the runtime side: metadata, errors --


def test_onnx_encoder_reads_its_metadata(tiny_encoder_onnx):
    encoder = OnnxEncoder(tiny_encoder_onnx, threads=1)
    spec = get_encoder_spec("efficientnet_lite0")
    assert encoder.name == "efficientnet_lite0"
    assert encoder.feature_size == spec.feature_size == 1280
    assert encoder.preprocessing == spec.preprocessing
    assert encoder.info["weights"] == "None"
    images = [Image.new("RGB", (50, 40), (i * 60, 100, 200)) for i in range(3)]
    features = encoder.encode(images)
    assert features.shape == (3, 1280) and features.dtype == np.float32
    assert encoder.encode([]).shape == (0, 1280)
    with pytest.raises(ValueError, match="batch"):
        encoder.encode_arrays(np.zeros((3, 224, 224), np.float32))


def test_random_weight_encoder_tells_images_apart(tiny_encoder_onnx, photo_files):
    """The test encoder must be a usable stand-in: O(1) features that depend on the image, not ~0 for all."""
    from captioner.encoders.images import load_image

    encoder = OnnxEncoder(tiny_encoder_onnx, threads=1)
    features = encoder.encode([load_image(p) for p in photo_files])
    scale = float(np.abs(features).mean())
    spread = float(np.abs(features - features.mean(axis=0)).mean())
    print(f"random lite0 features: mean |f| {scale:.3g}, mean |f - mean over images| {spread:.3g}")
    assert scale > 0.01
    assert spread > 0.01 * scale


def test_onnx_file_without_metadata_is_refused(tiny_encoder_onnx, tmp_path):
    import onnx

    model = onnx.load(str(tiny_encoder_onnx))
    assert [p.key for p in model.metadata_props] == [METADATA_KEY]
    json.loads(model.metadata_props[0].value)
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save_model(model, str(bare))
    with pytest.raises(EncoderError, match="metadata"):
        OnnxEncoder(bare)


def test_missing_or_invalid_encoder_file_is_refused(tmp_path):
    with pytest.raises(EncoderError, match="not found"):
        OnnxEncoder(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    with pytest.raises(EncoderError, match="not a valid ONNX"):
        OnnxEncoder(junk)


def test_unknown_encoder_name_lists_the_choices(tmp_path):
    with pytest.raises(EncoderError) as info:
        get_encoder_spec("resnet50")
    assert "resnet50" in str(info.value)
    for name in ENCODERS:
        assert name in str(info.value)
    with pytest.raises(EncoderError, match="efficientnet_lite0"):
        export_encoder("resnet50", tmp_path / "x.onnx", weights=None)
    assert not (tmp_path / "x.onnx").exists()
