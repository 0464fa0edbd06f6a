#!/usr/bin/env bash
# Create a virtualenv (.venv, or $CAPTIONER_VENV) and install captioner with the given extras (default: serve).
# Usage: bash scripts/setup.sh [extras]    e.g. bash scripts/setup.sh serve   |   bash scripts/setup.sh train,serve,test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve}"
venv="${CAPTIONER_VENV:-.venv}"
python3 -m venv "${venv}"
"${venv}/bin/python" -m pip install -q --upgrade pip
# torch is pinned to the CPU build (any other version pulls gigabytes of CUDA wheels).
"${venv}/bin/python" -m pip install -q -e ".[${extras}]"
# The gpu extra: onnxruntime-gpu replaces onnxruntime (a core dependency, so pip installed both; they share the
# onnxruntime module and the last one unpacked wins). Remove onnxruntime, then reinstall onnxruntime-gpu whole.
if [[ ",${extras}," == *",gpu,"* ]]; then
    gpu_pin="$(grep -o 'onnxruntime-gpu==[0-9.]*' pyproject.toml)"
    "${venv}/bin/python" -m pip uninstall -q -y onnxruntime
    "${venv}/bin/python" -m pip install -q --force-reinstall --no-deps "${gpu_pin}"
    "${venv}/bin/python" -c "import onnxruntime as ort; print('onnxruntime providers:', ort.get_available_providers())"
fi
# gpu together with train: TensorFlow's CPU build never sees a GPU; swap it for the CUDA build (gigabytes of NVIDIA
# wheels, so only when asked for). captioner train then logs "TensorFlow trains on /physical_device:GPU:0".
if [[ ",${extras}," == *",gpu,"* && ",${extras}," == *",train,"* ]]; then
    tf_pin="$(grep -o 'tensorflow-cpu==[0-9.]*' pyproject.toml | sed 's/-cpu//')"
    "${venv}/bin/python" -m pip uninstall -q -y tensorflow-cpu
    "${venv}/bin/python" -m pip install -q "${tf_pin/==/[and-cuda]==}"
fi
