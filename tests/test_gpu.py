"""The shipped bundle on CUDA gives the CPU's captions (log-probs within a tolerance). Needs a CUDA device and
onnxruntime-gpu (the gpu extra): skipped otherwise, with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.decode.options import DecodeOptions
from captioner.encoders.providers import CPU, CUDA, available_providers
from captioner.model.bundle import DEFAULT_BUNDLE
from test_default_bundle import photo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.bundle,
    pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").is_file(), reason="models/default not present"),
    pytest.mark.skipif(
        CUDA not in available_providers(),
        reason="CUDA is not available: onnxruntime offers no CUDAExecutionProvider (install the gpu extra)",
    ),
]
NAMES = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "horse"]
OPTIONS = DecodeOptions(beam_size=3, n_best=3)


def load(execution_provider: str):
    from captioner.loading import load

    # The same decoder backend on both (fp32, the GPU's default): only the provider differs.
    return load(decoder_backend="onnx", execution_provider=execution_provider)


@pytest.fixture(scope="module")
def engines():
    gpu = load("cuda")
    if gpu.info.providers["encoder"] != CUDA:
        pytest.skip(f"onnxruntime-gpu is installed but CUDA did not start (got {dict(gpu.info.providers)})")
    return load("cpu"), gpu


def test_cuda_captions_equal_cpu_captions(engines):
    cpu, gpu = engines
    assert dict(cpu.info.providers) == {"encoder": CPU, "decoder": CPU}
    assert dict(gpu.info.providers) == {"encoder": CUDA, "decoder": CUDA}
    images = [cpu.load(photo(n)) for n in NAMES]
    feats_cpu, feats_gpu = cpu.encoder.encode(images), gpu.encoder.encode(images)
    # cuDNN's convolutions (TF32 on Ampere and later) sum in another order than MLAS: close, not equal.
    np.testing.assert_allclose(feats_gpu, feats_cpu, rtol=0, atol=1e-2 * np.abs(feats_cpu).max())
    on_cpu, on_gpu = cpu.caption_images(images, OPTIONS), gpu.caption_images(images, OPTIONS)
    for name, a, b in zip(NAMES, on_cpu, on_gpu, strict=True):
        assert b.caption == a.caption, name
        best_a, best_b = a.candidates[0], b.candidates[0]
        assert best_b.caption == best_a.caption
        assert best_b.log_prob == pytest.approx(best_a.log_prob, abs=0.05), name
