"""The execution provider in the service: the setting reaches both sessions, /health says what each really got,
a cuda setting without CUDA stops startup with a clear message, and the micro-batcher's size follows the
encoder's real provider."""

from __future__ import annotations

import dataclasses

import onnxruntime as ort
import pytest
from service_helpers import service_settings

from captioner.decode.captioner import Captioner
from captioner.encoders.providers import CPU, CUDA, ProviderError
from captioner.service.state import load_captioner

NO_CUDA = pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="onnxruntime offers CUDA here")


def test_health_shows_the_provider_each_session_really_got(make_client):
    client = make_client(captioner=None, execution_provider="cpu", threads=1)  # loaded through the settings
    model = client.get("/health").json()["model"]
    assert model["providers"] == {"encoder": CPU, "decoder": CPU}
    assert model["decoder_backend"] == "onnx-int8"


@NO_CUDA
def test_cuda_setting_without_cuda_fails_at_startup(tiny_bundle):
    with pytest.raises(ProviderError) as info:
        load_captioner(service_settings(tiny_bundle, execution_provider="cuda"))
    assert "setting says cuda" in str(info.value) and ".[gpu]" in str(info.value)


def test_invalid_provider_setting_is_refused(tiny_bundle):
    with pytest.raises(ValueError, match="execution_provider"):
        service_settings(tiny_bundle, execution_provider="gpu")


def test_microbatch_settings_follow_the_real_provider(tiny_bundle):
    settings = service_settings(
        tiny_bundle, microbatch_max_size=8, microbatch_max_wait_ms=5, microbatch_max_size_gpu=32,
        microbatch_max_wait_ms_gpu=10,
    )  # fmt: skip
    assert settings.microbatch_for(CPU) == (8, 5.0)
    assert settings.microbatch_for(CUDA) == (32, 10.0)
    assert settings.microbatch_for("TensorrtExecutionProvider") == (32, 10.0)


def on_gpu(captioner: Captioner) -> Captioner:
    """The same captioner claiming that its sessions run on CUDA (only the batcher's choice reads it)."""
    info = dataclasses.replace(captioner.info, providers={"encoder": CUDA, "decoder": CUDA})
    return Captioner(captioner.encoder, captioner.decoder, captioner.vocabulary, info, captioner.max_pixels)


@pytest.mark.parametrize(("gpu", "expected"), [(False, (4, 0.003)), (True, (16, 0.012))])
def test_batcher_uses_the_gpu_sizes_on_a_gpu(make_client, service_captioner, gpu, expected):
    captioner = on_gpu(service_captioner) if gpu else service_captioner
    client = make_client(
        captioner=captioner, microbatch_max_size=4, microbatch_max_wait_ms=3, microbatch_max_size_gpu=16,
        microbatch_max_wait_ms_gpu=12,
    )  # fmt: skip
    batcher = client.app.state.service.batcher
    assert (batcher.max_batch_size, batcher.max_wait_s) == pytest.approx(expected)
