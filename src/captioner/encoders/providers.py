"""Which onnxruntime execution provider a session runs on: one setting (auto | cpu | cuda | tensorrt) for the
encoder and the decoder step alike.

onnxruntime takes a list of providers in order of preference and silently falls back to the next one when a
provider cannot start (CUDA libraries missing, no device, driver too old): the session then runs on the CPU
although CUDA was asked for. So the list passed in says what was wanted and ``session.get_providers()`` what
the session really got; ``session_provider`` compares the two and warns.

CUDA and TensorRT need the ``gpu`` extra (onnxruntime-gpu instead of onnxruntime; see the README).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, get_args

from captioner.errors import CaptionerError

log = logging.getLogger(__name__)

ExecutionProvider = Literal["auto", "cpu", "cuda", "tensorrt"]
EXECUTION_PROVIDERS: tuple[str, ...] = get_args(ExecutionProvider)
DEFAULT_EXECUTION_PROVIDER: ExecutionProvider = "auto"

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)
# onnxruntime is a core dependency, so installing the extra brings both; they share one module.
INSTALL_HINT = (
    'install the gpu extra (pip install -e ".[gpu]", then pip uninstall -y onnxruntime and '
    "pip install --force-reinstall --no-deps onnxruntime-gpu: onnxruntime and onnxruntime-gpu must not both be "
    "installed; bash scripts/setup.sh serve,gpu does all three)"
)
FALLBACK_HINT = (
    "CUDA libraries missing? onnxruntime-gpu needs the CUDA and cuDNN versions listed at "
    "https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements"
)


class ProviderError(CaptionerError):
    """An execution provider was asked for explicitly but onnxruntime does not offer it."""


def available_providers() -> list[str]:
    """The providers this onnxruntime build offers (CUDA only with onnxruntime-gpu; says nothing about a device)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(execution_provider: str, available: Sequence[str] | None = None) -> list[str]:
    """The providers list to pass to ``ort.InferenceSession``, best first, always ending with the CPU.

    auto: CUDA when onnxruntime offers it, else the CPU. cpu: the CPU only. cuda / tensorrt: that provider
    (TensorRT falls back to CUDA for the ops it cannot run); raises ProviderError when onnxruntime does not
    offer it. ``available``: ``available_providers()`` unless given (tests).
    """
    if execution_provider not in EXECUTION_PROVIDERS:
        raise ProviderError(
            f"execution provider must be one of {', '.join(EXECUTION_PROVIDERS)}, got {execution_provider!r}"
        )
    available = available_providers() if available is None else list(available)
    if execution_provider == "cpu":
        return [CPU]
    if execution_provider == "auto":
        # TensorRT is not chosen automatically: it compiles an engine per input shape (minutes at first run).
        return [CUDA, CPU] if CUDA in available else [CPU]
    wanted = CUDA if execution_provider == "cuda" else TENSORRT
    if wanted not in available:
        raise ProviderError(
            f"the execution provider setting says {execution_provider} but onnxruntime offers only "
            f"{', '.join(available) or 'nothing'}: {INSTALL_HINT}, or set CAPTIONER_EXECUTION_PROVIDER / "
            "--execution-provider to auto or cpu"
        )
    return [TENSORRT, CUDA, CPU] if wanted == TENSORRT else [CUDA, CPU]


def fallback_warning(what: str, requested: Sequence[str], got: Sequence[str]) -> str | None:
    """The warning to log when a session did not get its first requested provider; None when it did."""
    if not requested or not got or got[0] == requested[0]:
        return None
    return f"{what}: asked for {requested[0]}, got {got[0]}: {FALLBACK_HINT}"


def session_provider(session, requested: Sequence[str], what: str) -> str:
    """The provider ``session`` really runs on (its first), with a warning on the log if it is not the first
    of ``requested`` (onnxruntime fell back). what: the session's name in the message ("encoder")."""
    got = list(session.get_providers())
    warning = fallback_warning(what, requested, got)
    if warning:
        log.warning(warning)
    return got[0] if got else CPU


def is_gpu(provider: str) -> bool:
    """True for a provider name that runs on a GPU (CUDA, TensorRT)."""
    return provider in GPU_PROVIDERS
