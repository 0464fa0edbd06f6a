#!/usr/bin/env bash
# Set up the serving environment (no TensorFlow) and run the REST service with the shipped default model.
# Settings come from the environment (HOST, PORT, MODEL_PATH, CAPTIONER_*; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh serve
exec .venv/bin/captioner serve "$@"
