"""Smaller or faster copies of an exported encoder: int8 (static QDQ) and float16-stored weights.

    quantize_encoder(src, out, "int8", calibration_images=[...])   # int8 weights and activations
    quantize_encoder(src, out, "float16")                          # half-size file, compute stays float32

Each copy keeps the encoder's metadata (preprocessing, feature size) with ``weights_dtype`` set to what it
holds, so ``OnnxEncoder`` loads it as is. The int8 activation ranges come from the calibration images: they
should look like the photos the encoder will see (ranges from one kind of photo can clip another kind).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from captioner.encoders.export import METADATA_KEY, store_weights_as_float16
from captioner.errors import EncoderError

PRECISIONS = ("int8", "float16")


class _Calibration:
    """onnxruntime's CalibrationDataReader over preprocessed images, one image per batch."""

    def __init__(self, input_name: str, arrays: list) -> None:
        self._items = iter([{input_name: a[None]} for a in arrays])

    def get_next(self):
        return next(self._items, None)


# The first convolutions that stay float32 in an int8 copy (``float_head``); see bench/README.md's int8 section.
FLOAT_HEAD_CONVS = 3


def quantize_encoder(
    src: str | Path,
    out: str | Path,
    precision: str = "int8",
    calibration_images: Sequence[str | Path | bytes] = (),
    float_head_convs: int = FLOAT_HEAD_CONVS,
    seven_bit_weights: bool = False,
) -> Path:
    """Write a ``precision`` copy of the ONNX encoder ``src`` to ``out`` (atomically) and return ``out``.

    int8: static quantisation in QDQ form, int8 weights per output channel, uint8 activations whose ranges
    (MinMax) are measured on ``calibration_images`` (files or encoded bytes; a few dozen varied photos). The first
    ``float_head_convs`` convolutions (``float_head``) and the nodes that make the outputs (``float_tail``) stay
    float32. seven_bit_weights: weights in [-64, 64], for CPUs without VNNI: there onnxruntime's u8 x s8 kernels
    (AVX2's vpmaddubsw) sum pairs of products in int16, which 8-bit weights can saturate and 7-bit ones cannot
    (the decoder step's int8 weights are 7-bit for that reason). It costs accuracy: on photos unlike Flickr8k
    the features' cosine with float32 falls from >= 0.98 to >= 0.89 (``bench/results/int8_encoder.json``).
    float16: the large weights stored in half precision with a Cast back to float32 (export's own path).
    """
    import onnx

    from captioner.encoders.runtime import OnnxEncoder

    if precision not in PRECISIONS:
        raise EncoderError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and not calibration_images:
        raise EncoderError(
            "int8 quantisation needs calibration images (a few dozen photos like those served)"
        )
    src, out = Path(src), Path(out)
    encoder = OnnxEncoder(src, threads=1)  # refuses a file that is not a captioner encoder
    info = dict(encoder.info, weights_dtype=precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        if precision == "int8":
            model = _int8(src, Path(tmp), encoder, calibration_images, float_head_convs, seven_bit_weights)
        else:
            model = onnx.load(str(src))
            store_weights_as_float16(model)
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(info, sort_keys=True)
        tmp_out = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(tmp_out))
        tmp_out.replace(out)
    return out


def _int8(src: Path, tmp: Path, encoder, calibration_images, float_head_convs: int, seven_bit_weights: bool):
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from captioner.encoders.images import load_and_preprocess

    prepared, quantized = tmp / "prepared.onnx", tmp / "int8.onnx"
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
    model = onnx.load(str(prepared))
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"  # nodes_to_exclude needs names
    onnx.save_model(model, str(prepared))
    arrays = [load_and_preprocess(image, encoder.preprocessing) for image in calibration_images]
    quantize_static(
        str(prepared),
        str(quantized),
        _Calibration(encoder.input_name, arrays),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=seven_bit_weights,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=float_head(model, float_head_convs) + float_tail(model),
    )
    return onnx.load(str(quantized))


def float_head(model, convs: int) -> list[str]:
    """Names of the graph's first ``convs`` Conv nodes (topological order): they stay float32.

    They see the image at full resolution through few channels, and one 8-bit activation range per tensor
    rounds away the channels whose values are small. On EfficientNet-Lite2 the first 3 (the stem, the first
    depthwise and projection convolutions: 3.3% of the multiply-adds) kept float raise the features' minimum
    cosine with float32 from 0.88 to 0.98 and ImageNet top-1 agreement from 80% to 95% on photos unlike any
    calibration photo, at no speed cost that two runs could tell apart from noise (``bench/README.md``).
    """
    return [node.name for node in model.graph.node if node.op_type == "Conv"][:convs]


def float_tail(model) -> list[str]:
    """Names of the nodes that make the graph's outputs or read them (the pooling that makes ``features``, the
    ImageNet head and its softmax): they stay float32.

    Quantised, the outputs themselves would be rounded to 256 levels: the features to steps of ~6/255, and the
    ImageNet probabilities to steps of 1/255, which ties every class below 0.2 % at zero and scrambles the top 5.
    The tail is a ~1 MFLOP of the encoder's ~1.7 GFLOP, so keeping it float costs no speed.
    """
    outputs = {o.name for o in model.graph.output}
    tail, names = set(outputs), []
    for node in model.graph.node:  # topologically sorted, as ONNX requires
        if any(o in outputs for o in node.output) or any(i in tail for i in node.input):
            tail.update(node.output)
            names.append(node.name)
    return names
