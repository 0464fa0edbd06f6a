"""Training-time photo views: seeded per (view, photo), bounded, a cache of their own."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from captioner.encoders.augment import PhotoView
from captioner.encoders.features import extract_features
from captioner.encoders.images import load_image, preprocess
from captioner.encoders.runtime import OnnxEncoder


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8), "RGB").resize(
        (224, 168), Image.Resampling.BILINEAR
    )


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def test_a_view_is_the_same_for_the_same_number_and_photo(photo):
    a, b = PhotoView(1)(photo, "x.jpg"), PhotoView(1)(photo.copy(), "x.jpg")
    np.testing.assert_array_equal(_pixels(a), _pixels(b))


def test_views_differ_by_number_and_by_photo_name(photo):
    base = _pixels(PhotoView(1)(photo, "x.jpg"))
    assert np.abs(base - _pixels(PhotoView(2)(photo, "x.jpg"))).mean() > 1.0
    assert np.abs(base - _pixels(PhotoView(1)(photo, "y.jpg"))).mean() > 1.0


def test_a_view_keeps_the_photo_size_and_stays_near_it(photo):
    views = [PhotoView(k)(photo, "x.jpg") for k in range(1, 9)]
    assert all(v.size == photo.size and v.mode == "RGB" for v in views)
    # crop >= 75% of the area, colour within +-25%: the scene's mean colour moves, but not far
    means = np.array([_pixels(v).mean(axis=(0, 1)) for v in views])
    assert np.all(np.abs(means - _pixels(photo).mean(axis=(0, 1))) < 64)


def test_without_jitter_a_view_is_only_the_jpeg_round_trip(photo):
    view = PhotoView(
        3, min_crop_area=1.0, aspect_jitter=0.0, colour_jitter=0.0, mirror_prob=0.0, jpeg_quality=(75, 75)
    )
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=75)
    expected = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    np.testing.assert_array_equal(_pixels(view(photo, "x.jpg")), _pixels(expected))


def test_mirror_prob_one_mirrors(photo):
    still = dict(min_crop_area=1.0, aspect_jitter=0.0, colour_jitter=0.0, jpeg_quality=(95, 95))
    mirrored = _pixels(PhotoView(1, mirror_prob=1.0, **still)(photo, "x.jpg"))
    plain = _pixels(PhotoView(1, mirror_prob=0.0, **still)(photo, "x.jpg"))
    assert np.abs(mirrored - plain[:, ::-1]).mean() < 2.0 < np.abs(mirrored - plain).mean()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"number": 0},
        {"min_crop_area": 0.0},
        {"colour_jitter": 1.0},
        {"mirror_prob": 1.5},
        {"jpeg_quality": (90, 40)},
    ],
)
def test_invalid_views_are_refused(kwargs):
    with pytest.raises(ValueError, match="PhotoView"):
        PhotoView(**{"number": 1, **kwargs})


def test_view_features_are_the_views_pixels_and_cached_apart(tmp_path, photo_files, tiny_encoder_onnx):
    encoder = OnnxEncoder(tiny_encoder_onnx, threads=1)
    folder = tmp_path / "images"
    folder.mkdir()
    for p in photo_files[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    names = sorted(p.name for p in folder.iterdir())
    spec = encoder.preprocessing
    plain = extract_features(names, folder, encoder, tmp_path / "plain", progress=False)
    view = PhotoView(1)
    viewed = extract_features(names, folder, encoder, tmp_path / "view1", progress=False, view=view)
    images = [view(load_image(folder / n, draft_size=spec.size, resize=spec.resize), n) for n in names]
    expected = encoder.encode_arrays(np.stack([preprocess(im, spec) for im in images]))
    np.testing.assert_allclose(viewed, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(viewed, plain, atol=1e-3)
    assert json.loads((tmp_path / "view1" / "index.json").read_text())["view"] == view.to_dict()
    # A second run reads the cache (its index round-trips through JSON), a different view recomputes.
    calls = []
    original = encoder.encode_arrays
    encoder.encode_arrays = lambda batch: calls.append(len(batch)) or original(batch)  # type: ignore[method-assign]
    again = extract_features(names, folder, encoder, tmp_path / "view1", progress=False, view=view)
    assert calls == [] and np.array_equal(again, viewed)
    extract_features(names, folder, encoder, tmp_path / "view1", progress=False, view=PhotoView(2))
    assert sum(calls) == len(names)
