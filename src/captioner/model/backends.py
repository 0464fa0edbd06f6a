"""The decoder step's backends, named in one place: what ``decoder_backend`` (CLI flag, setting) can be."""

from __future__ import annotations

from typing import Any, Literal, get_args

from captioner.encoders.providers import is_gpu

DecoderBackend = Literal["onnx", "onnx-int8", "numpy"]
DECODER_BACKENDS: tuple[str, ...] = get_args(DecoderBackend)
# int8 by default: dev BLEU-1..4/METEOR/ROUGE-L/CIDEr equal to fp32's or better (models/default/README.md), a
# ~1.7x faster step, and, quantised per row, the same answer whatever else shares the batch (tests/model/).
DEFAULT_DECODER_BACKEND: DecoderBackend = "onnx-int8"
# On a GPU: fp32, since int8's MatMulInteger would run on the CPU there (model/onnx_step.py, OnnxDecoder).
DEFAULT_GPU_DECODER_BACKEND: DecoderBackend = "onnx"


def default_decoder_backend(provider: str) -> DecoderBackend:
    """The decoder backend for a session that really runs on ``provider`` (e.g. the encoder's)."""
    return DEFAULT_GPU_DECODER_BACKEND if is_gpu(provider) else DEFAULT_DECODER_BACKEND


def session_providers(encoder: Any, decoder: Any) -> dict[str, str]:
    """{"encoder": provider, "decoder": provider} each session really runs on ("numpy": no session)."""
    return {"encoder": encoder.provider, "decoder": getattr(decoder, "provider", "numpy")}


def step_decoder(
    reference: Any, backend: DecoderBackend, threads: int | None = None, execution_provider: str = "cpu"
) -> Any:
    """The step decoder a backend name stands for, over a NumPy reference step (NumpyDecoder, MergeStepDecoder:
    any step with ``graph_weights()``): "numpy" -> the reference itself; "onnx" / "onnx-int8" -> its
    onnxruntime graph in fp32 / int8 (model/onnx_step.py) on ``execution_provider`` (encoders/providers.py)."""
    if backend not in DECODER_BACKENDS:
        raise ValueError(f"decoder_backend must be one of {DECODER_BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return reference
    from captioner.model.onnx_step import OnnxDecoder

    precision = "int8" if backend == "onnx-int8" else "fp32"
    return OnnxDecoder(reference, threads=threads, precision=precision, execution_provider=execution_provider)
