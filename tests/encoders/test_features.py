"""Feature extraction: same pixels as caption time, cached, resumable."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from captioner import loading
from captioner.encoders.features import extract_features
from captioner.encoders.images import load_image, preprocess
from captioner.encoders.runtime import OnnxEncoder
from captioner.errors import DataError


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, photo_files):
    """The conftest photos plus one large JPEG, so that draft decoding is in play."""
    folder = tmp_path_factory.mktemp("images")
    for p in photo_files:
        shutil.copyfile(p, folder / p.name)
    rng = np.random.default_rng(3)
    big = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8), "RGB").resize(
        (1200, 900), Image.BILINEAR
    )
    big.save(folder / "big.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def names(image_dir):
    return sorted(p.name for p in image_dir.iterdir())  # 5 images


@pytest.fixture(scope="module")
def encoder(tiny_encoder_onnx):
    return OnnxEncoder(tiny_encoder_onnx, threads=1)


@pytest.fixture(scope="module")
def clean(names, image_dir, encoder, tmp_path_factory):
    """Features of an uninterrupted run."""
    return np.array(
        extract_features(
            names, image_dir, encoder, tmp_path_factory.mktemp("clean"), batch_size=2, progress=False
        )
    )


class CountingEncoder:
    """Wraps an OnnxEncoder's encode_arrays to count rows; optionally fails on call number ``fail_on``."""

    def __init__(self, encoder: OnnxEncoder, monkeypatch, fail_on: int | None = None):
        self.rows: list[int] = []
        self.fail_on = fail_on
        original = encoder.encode_arrays

        def encode_arrays(batch):
            if self.fail_on is not None and len(self.rows) + 1 == self.fail_on:
                raise KeyboardInterrupt("simulated interruption")
            self.rows.append(len(batch))
            return original(batch)

        monkeypatch.setattr(encoder, "encode_arrays", encode_arrays)


def test_shape_and_dtype(clean, names, encoder):
    assert clean.shape == (len(names), encoder.feature_size) and clean.dtype == np.float32
    assert np.isfinite(clean).all()
    assert len({tuple(row[:8]) for row in clean}) == len(names)  # every row computed, none left zero


def test_extraction_equals_caption_time_path(clean, names, image_dir, encoder, tiny_bundle):
    """No train/serve skew: extraction, load_image+preprocess and Captioner.load all see the same pixels."""
    spec = encoder.preprocessing
    loaded = [load_image(image_dir / n, draft_size=spec.size) for n in names]
    direct = encoder.encode_arrays(np.stack([preprocess(im, spec) for im in loaded]))
    np.testing.assert_allclose(clean, direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clean, encoder.encode(loaded), rtol=1e-5, atol=1e-5)
    captioner = loading.load(tiny_bundle, threads=1)
    served = captioner.encoder.encode([captioner.load(image_dir / n) for n in names])
    np.testing.assert_allclose(clean, served, rtol=1e-5, atol=1e-5)


def test_second_call_is_served_from_the_cache(names, image_dir, encoder, tmp_path, monkeypatch, clean):
    first = extract_features(names, image_dir, encoder, tmp_path, batch_size=2, progress=False)
    spy = CountingEncoder(encoder, monkeypatch)
    second = extract_features(names, image_dir, encoder, tmp_path, batch_size=2, progress=False)
    assert spy.rows == []
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, clean)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["encoder"] == encoder.name and index["count"] == len(names)


def test_interrupted_run_resumes_with_the_remaining_rows(
    names, image_dir, encoder, tmp_path, monkeypatch, clean
):
    with monkeypatch.context() as m:
        spy = CountingEncoder(encoder, m, fail_on=2)
        with pytest.raises(KeyboardInterrupt):
            extract_features(names, image_dir, encoder, tmp_path, batch_size=2, progress=False)
        assert spy.rows == [2]
    assert np.load(tmp_path / "done.npy").tolist() == [True, True, False, False, False]
    spy = CountingEncoder(encoder, monkeypatch)
    resumed = extract_features(names, image_dir, encoder, tmp_path, batch_size=2, progress=False)
    assert spy.rows == [2, 1]  # rows 2..4 only
    np.testing.assert_allclose(resumed, clean, rtol=1e-6, atol=1e-6)


def test_changed_names_are_recomputed(names, image_dir, encoder, tmp_path, monkeypatch, clean):
    extract_features(names, image_dir, encoder, tmp_path, batch_size=2, progress=False)
    spy = CountingEncoder(encoder, monkeypatch)
    reordered = list(reversed(names))
    again = extract_features(reordered, image_dir, encoder, tmp_path, batch_size=2, progress=False)
    assert sum(spy.rows) == len(names)
    np.testing.assert_allclose(again, clean[::-1], rtol=1e-5, atol=1e-5)
    spy.rows.clear()
    fewer = extract_features(names[:2], image_dir, encoder, tmp_path, batch_size=2, progress=False)
    assert spy.rows == [2] and fewer.shape == (2, encoder.feature_size)


def test_corrupt_image_is_a_data_error_naming_the_file(names, image_dir, encoder, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(image_dir, folder)
    (folder / "broken.jpg").write_bytes((folder / names[0]).read_bytes()[:300])
    with pytest.raises(DataError, match="broken.jpg"):
        extract_features(
            [*names, "broken.jpg"], folder, encoder, tmp_path / "cache", batch_size=2, progress=False
        )
    with pytest.raises(DataError, match="missing.jpg"):
        extract_features(["missing.jpg"], folder, encoder, tmp_path / "cache2", progress=False)
