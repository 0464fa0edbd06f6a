#!/usr/bin/env bash
# Create .venv and install captioner with the given extras (default: serve), plus system packages the tests need.
# Usage: bash scripts/setup.sh [extras]    e.g. bash scripts/setup.sh serve   |   bash scripts/setup.sh train,serve,test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to the CPU build (any other version pulls gigabytes of CUDA wheels).
.venv/bin/python -m pip install -q -e ".[${extras}]"
