#!/usr/bin/env bash
# Set up everything the tests need, check lint, format and types (ruff, mypy), then run all the tests (fast,
# slow, real-bundle and real-data).
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  command -v java >/dev/null || missing+=(default-jre-headless)   # METEOR scorer
  command -v redis-server >/dev/null || missing+=(redis-server)   # shared rate limit / cache tests
  command -v chromium >/dev/null || missing+=(chromium)           # web page end-to-end test
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)  # load-balancer integration test
  # tests/deploy/test_docker.py: the image and the compose stack for real, on a registry-free Debian base
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
bash scripts/setup.sh train,serve,test,distributed
# Lint, format and types first: any finding stops the run before the (minutes-long) tests.
lint_paths=(src tests bench scripts)
step() { echo "== $*"; "$@" || { echo "FAILED: $* (fix the findings above; ruff: 'ruff check --fix' / 'ruff format')" >&2; exit 1; }; }
step .venv/bin/ruff check "${lint_paths[@]}"
step .venv/bin/ruff format --check "${lint_paths[@]}"
step .venv/bin/mypy  # [tool.mypy] in pyproject.toml: files, plugins, strictness
exec .venv/bin/python -m pytest "$@"
