"""The decoder step's backends, named in one place: what ``decoder_backend`` (CLI flag, setting) can be."""

from __future__ import annotations

from typing import Any, Literal, get_args

DecoderBackend = Literal["onnx", "onnx-int8", "numpy"]
DECODER_BACKENDS: tuple[str, ...] = get_args(DecoderBackend)
# int8 by default: dev BLEU-1..4/METEOR/ROUGE-L/CIDEr equal to fp32's or better (models/default/README.md), a
# ~1.7x faster step, and, quantised per row, the same answer whatever else shares the batch (tests/model/).
DEFAULT_DECODER_BACKEND: DecoderBackend = "onnx-int8"


def step_decoder(reference: Any, backend: DecoderBackend, threads: int | None = None) -> Any:
    """The step decoder a backend name stands for, over a NumPy reference step (NumpyDecoder, MergeStepDecoder:
    any step with ``graph_weights()``): "numpy" -> the reference itself; "onnx" / "onnx-int8" -> its
    onnxruntime graph in fp32 / int8 (model/onnx_step.py)."""
    if backend not in DECODER_BACKENDS:
        raise ValueError(f"decoder_backend must be one of {DECODER_BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return reference
    from captioner.model.onnx_step import OnnxDecoder

    return OnnxDecoder(reference, threads=threads, precision="int8" if backend == "onnx-int8" else "fp32")
