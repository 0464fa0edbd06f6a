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


def quantize_encoder(
    src: str | Path,
    out: str | Path,
    precision: str = "int8",
    calibration_images: Sequence[str | Path | bytes] = (),
) -> Path:
    """Write a ``precision`` copy of the ONNX encoder ``src`` to ``out`` (atomically) and return ``out``.

    int8: static quantisation in QDQ form, int8 weights per output channel, uint8 activations whose ranges
    (MinMax) are measured on ``calibration_images`` (files or encoded bytes; a few dozen varied photos); the
    nodes that make the outputs (``float_tail``) stay float32.
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
            model = _int8(src, Path(tmp), encoder, calibration_images)
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


def _int8(src: Path, tmp: Path, encoder, calibration_images):
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
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=float_tail(model),
    )
    return onnx.load(str(quantized))


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
