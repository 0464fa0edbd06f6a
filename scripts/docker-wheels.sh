#!/usr/bin/env bash
# Wheels of the serving extra for deploy/Dockerfile, built here (with this machine's pip configuration: index, proxy,
# certificates) into deploy/wheelhouse/, from which the image build installs with --no-index.
# Run on Linux x86_64 with Python 3.11 (the image's platform). Usage: bash scripts/docker-wheels.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
out=deploy/wheelhouse
rm -f "$out"/*.whl
# The versions installed in that environment, where present: the image gets what was tested here.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$python" -m pip freeze --exclude-editable | grep -v ' @ ' > "$constraints" || true
# The build backend too: the image builds the captioner package from source in an isolated build environment.
"$python" -m pip wheel -q --wheel-dir "$out" --constraint "$constraints" ".[serve]" "setuptools>=68" wheel
rm -f "$out"/captioner-*.whl  # built from the source in the image, never from a stale wheel
# Dependencies conditional on the Python version (e.g. redis needs async-timeout below 3.11.3): the image's Python
# (Debian's 3.11.2) may differ from this one, so fetch those whatever their marker says.
"$python" - "$out" > "$constraints.extra" <<'PY'
import re, sys, zipfile
from pathlib import Path

for wheel in Path(sys.argv[1]).glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "python_" in line and "extra ==" not in line:
                print(re.split(r"\s*;", line.split(":", 1)[1].strip())[0])
PY
if [ -s "$constraints.extra" ]; then
  "$python" -m pip wheel -q --wheel-dir "$out" --constraint "$constraints" -r "$constraints.extra" \
    || echo "some version-conditional dependencies have no wheel for this Python: the image build will say which" >&2
fi
rm -f "$constraints.extra"
ls "$out"/*.whl | wc -l | xargs echo "wheels in $out:"
