#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, made without any container registry: debootstrap (minbase) from
# the Debian mirror apt already uses, then `docker import`. Cached by its recipe: the tag is
# captioner-base:<hash of this script>, and an image with that tag is reused (checked with docker image inspect).
#
#   bash scripts/docker-base.sh                 # prints the tag, e.g. captioner-base:3f0c2a1b9d4e
#   docker build -f deploy/Dockerfile --build-arg PYTHON_IMAGE="$(bash scripts/docker-base.sh)" -t captioner .
#
# Where Docker Hub is reachable, none of this is needed: the Dockerfile's default base is python:3.11-slim.
# Needs root, debootstrap and a running dockerd. DOCKER names the docker CLI (default: docker on PATH);
# DEBIAN_MIRROR the mirror (default: the first Debian URI in /etc/apt/sources.list{,.d/*}, else deb.debian.org).
set -euo pipefail
docker="${DOCKER:-docker}"  # the docker CLI to use
# The recipe: change anything below and the hash (so the tag) changes.
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
tag="captioner-base:$(sha256sum "$0" | cut -c1-12)"
if "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v '^\s*#' | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
root="$(mktemp -d /tmp/captioner-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap $SUITE (minbase + $PACKAGES) from $mirror" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >&2
# Slim it like the official slim images: no apt lists, caches, docs or man pages.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/tmp/*
tar -C "$root" -c . | "$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$tag" >&2
echo "$tag"
