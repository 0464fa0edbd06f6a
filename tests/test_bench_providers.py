"""Smoke test of bench/providers.py on the tiny bundle: every section is there and the machine is named; a
provider onnxruntime does not offer is recorded as skipped with the reason. Not a measurement."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

sys.path.insert(0, str(REPO))  # bench/ is a top-level folder, not part of the installed package


def test_providers_bench_writes_each_provider_and_the_machine(tiny_bundle, tmp_path):
    import onnxruntime as ort
    from bench.providers import main

    out = tmp_path / "providers.json"
    main(["--bundle", str(tiny_bundle), "--providers", "cpu,cuda", "--batches", "1,2", "--repeats", "2",
          "--photos", "2", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] >= 1 and result["machine"]["onnxruntime"] == ort.__version__
    assert "gpus" in result["machine"] and result["machine"]["available_providers"]
    cpu = result["providers"]["cpu"]
    assert cpu["providers"] == {"encoder": "CPUExecutionProvider", "decoder": "CPUExecutionProvider"}
    assert set(cpu["encoder"]) == {"1", "2"} and all(e["images_per_s"] > 0 for e in cpu["encoder"].values())
    assert cpu["end_to_end"]["single_ms"]["p50"] > 0 and len(cpu["end_to_end"]["captions"]) == 2
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "onnxruntime offers only" in result["providers"]["cuda"]["skipped"]
