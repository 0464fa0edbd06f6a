"""Execution provider selection (encoders/providers.py) on a CPU machine: the list passed to onnxruntime, the
fallback warning, the error for an explicit provider onnxruntime does not offer, and real sessions."""

from __future__ import annotations

import logging

import pytest

from captioner.encoders.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderError,
    fallback_warning,
    resolve_providers,
    session_provider,
)

CPU_ONLY = [CPU]
WITH_CUDA = [CUDA, CPU]
WITH_TRT = [TENSORRT, CUDA, CPU]


@pytest.mark.parametrize(
    ("setting", "available", "expected"),
    [
        ("auto", CPU_ONLY, [CPU]),
        ("auto", WITH_CUDA, [CUDA, CPU]),
        ("auto", WITH_TRT, [CUDA, CPU]),  # TensorRT only when asked for: it builds engines per shape
        ("cpu", CPU_ONLY, [CPU]),
        ("cpu", WITH_TRT, [CPU]),
        ("cuda", WITH_CUDA, [CUDA, CPU]),
        ("cuda", WITH_TRT, [CUDA, CPU]),
        ("tensorrt", WITH_TRT, [TENSORRT, CUDA, CPU]),
    ],
)
def test_resolution_table(setting, available, expected):
    assert resolve_providers(setting, available) == expected


@pytest.mark.parametrize(("setting", "available"), [("cuda", CPU_ONLY), ("tensorrt", WITH_CUDA)])
def test_explicit_provider_onnxruntime_lacks_is_a_clear_error(setting, available):
    with pytest.raises(ProviderError) as info:
        resolve_providers(setting, available)
    message = str(info.value)
    assert f"says {setting}" in message and f"offers only {', '.join(available)}" in message
    assert ".[gpu]" in message and "must not both be installed" in message and "setup.sh serve,gpu" in message


def test_unknown_provider_name_lists_the_valid_ones():
    with pytest.raises(ProviderError, match="auto, cpu, cuda, tensorrt"):
        resolve_providers("gpu", CPU_ONLY)


class FakeSession:
    def __init__(self, providers):
        self.providers = providers

    def get_providers(self):
        return self.providers


def test_fallback_to_cpu_is_detected_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="captioner.encoders.providers"):
        got = session_provider(FakeSession([CPU]), [CUDA, CPU], "encoder")
    assert got == CPU
    assert caplog.messages == [fallback_warning("encoder", [CUDA, CPU], [CPU])]
    assert caplog.messages[0].startswith(
        "encoder: asked for CUDAExecutionProvider, got CPUExecutionProvider: "
    )
    assert "CUDA libraries missing?" in caplog.messages[0] and "onnxruntime.ai" in caplog.messages[0]


def test_no_warning_when_the_session_got_what_it_asked_for(caplog):
    with caplog.at_level(logging.WARNING):
        assert session_provider(FakeSession([CUDA, CPU]), [CUDA, CPU], "encoder") == CUDA
        assert session_provider(FakeSession([CPU]), [CPU], "decoder step") == CPU
    assert caplog.messages == []


def test_real_sessions_report_the_cpu_here(tiny_bundle):
    import onnxruntime as ort

    from captioner.loading import load

    captioner = load(tiny_bundle, threads=1, execution_provider="auto")
    expected = CUDA if CUDA in ort.get_available_providers() else CPU
    assert dict(captioner.info.providers) == {"encoder": expected, "decoder": expected}
    # On the CPU the decoder step defaults to int8; on a GPU to fp32 (int8's MatMulInteger would run on the CPU).
    assert captioner.info.decoder_backend == ("onnx" if expected == CUDA else "onnx-int8")


@pytest.mark.skipif(CUDA in __import__("onnxruntime").get_available_providers(), reason="CUDA is offered")
def test_loading_with_cuda_requested_fails_without_it(tiny_bundle):
    from captioner.loading import load

    with pytest.raises(ProviderError, match="setting says cuda"):
        load(tiny_bundle, threads=1, execution_provider="cuda")
