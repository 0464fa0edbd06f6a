"""Quantised copies of an encoder: they load as encoders, keep its metadata and compute nearly what it computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from PIL import Image

from captioner.encoders.quantize import FLOAT_HEAD_CONVS, quantize_encoder
from captioner.encoders.runtime import OnnxEncoder
from captioner.errors import EncoderError


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _int8_weights(graph) -> list[np.ndarray]:
    return [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]


@pytest.fixture(scope="module")
def images(photo_files) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in photo_files]


def test_float16_copy_is_half_the_file_and_computes_the_same(tiny_encoder_onnx, images, tmp_path):
    out = quantize_encoder(tiny_encoder_onnx, tmp_path / "enc.fp16.onnx", "float16")
    original, half = OnnxEncoder(tiny_encoder_onnx), OnnxEncoder(out)
    assert half.info["weights_dtype"] == "float16"
    assert half.preprocessing == original.preprocessing and half.feature_size == original.feature_size
    assert out.stat().st_size < 0.6 * tiny_encoder_onnx.stat().st_size
    # float16 weights, float32 compute: each weight is off by at most 2**-11 of itself.
    np.testing.assert_allclose(half.encode(images), original.encode(images), rtol=0.05, atol=0.02)


@pytest.mark.slow
def test_int8_copy_keeps_the_features_direction(tiny_encoder_onnx, photo_files, images, tmp_path):
    out = quantize_encoder(tiny_encoder_onnx, tmp_path / "enc.int8.onnx", "int8", photo_files)
    original, int8 = OnnxEncoder(tiny_encoder_onnx), OnnxEncoder(out)
    assert int8.info["weights_dtype"] == "int8" and int8.feature_size == original.feature_size
    assert out.stat().st_size < 0.5 * tiny_encoder_onnx.stat().st_size
    assert _cosine(int8.encode(images), original.encode(images)).min() > 0.9
    assert int8.encode([]).shape == (0, original.feature_size)
    # The outputs come out of float nodes (float_tail), never straight out of a DequantizeLinear: a quantised
    # output would be rounded to 256 levels.
    graph = onnx.load(str(out)).graph
    makers = {o: n.op_type for n in graph.node for o in n.output}
    assert all(makers[o.name] not in ("DequantizeLinear", "QuantizeLinear") for o in graph.output)
    assert "DequantizeLinear" in makers.values()  # the rest is quantised
    # The first convolutions keep float weights and a float input (float_head); the next ones are int8.
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert [makers.get(c.input[1]) for c in convs[:FLOAT_HEAD_CONVS]] == [None] * FLOAT_HEAD_CONVS
    assert makers.get(convs[0].input[0]) is None  # the image itself, never rounded to 8 bits
    assert all(makers.get(c.input[1]) == "DequantizeLinear" for c in convs[FLOAT_HEAD_CONVS:])
    weights = _int8_weights(graph)
    assert max(int(np.abs(w).max()) for w in weights) > 64  # all 8 bits used


@pytest.mark.slow
def test_int8_copy_for_cpus_without_vnni(tiny_encoder_onnx, photo_files, images, tmp_path):
    """Every convolution quantised, weights in 7 bits: u8 x s8 products summed in pairs fit int16."""
    out = quantize_encoder(
        tiny_encoder_onnx,
        tmp_path / "all.onnx",
        "int8",
        photo_files,
        float_head_convs=0,
        seven_bit_weights=True,
    )
    graph = onnx.load(str(out)).graph
    makers = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(makers.get(c.input[1]) == "DequantizeLinear" for c in convs)
    weights = _int8_weights(graph)
    assert weights and all(int(np.abs(w).max()) <= 64 for w in weights)
    original, int8 = OnnxEncoder(tiny_encoder_onnx), OnnxEncoder(out)
    assert _cosine(int8.encode(images), original.encode(images)).min() > 0.8


def test_refuses_what_it_cannot_do(tiny_encoder_onnx, tmp_path):
    with pytest.raises(EncoderError, match="calibration images"):
        quantize_encoder(tiny_encoder_onnx, tmp_path / "a.onnx", "int8")
    with pytest.raises(EncoderError, match="precision"):
        quantize_encoder(tiny_encoder_onnx, tmp_path / "b.onnx", "int4")
    with pytest.raises(EncoderError, match="not found"):
        quantize_encoder(tmp_path / "missing.onnx", tmp_path / "c.onnx", "float16")
    assert not list(tmp_path.iterdir())  # nothing half-written
