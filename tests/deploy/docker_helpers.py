"""Docker for the container tests: a daemon (started here when none runs, stopped again after), the registry-free
base image (scripts/docker-base.sh, cached by its recipe), the host-built wheelhouse (scripts/docker-wheels.sh),
image builds, and container state.

Builds use BuildKit (it reads deploy/Dockerfile.dockerignore; the classic builder would send the whole checkout)
through Debian's docker CLI, which drives the daemon's built-in BuildKit without the buildx plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from processes import REPO, ensure_binary


def docker_cli() -> str:
    """Debian's docker CLI (/usr/bin/docker, package docker.io) when present: a newer CLI on PATH without the
    buildx plugin refuses BuildKit builds."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").is_file() else (shutil.which("docker") or "docker")


def docker(*args: str, timeout: float = 120, check: bool = True, env: dict | None = None):
    """``docker args...`` -> CompletedProcess (text); raises with the output when ``check`` and it fails."""
    result = subprocess.run(
        [docker_cli(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, DOCKER_BUILDKIT="1", **(env or {})),
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def daemon_up() -> bool:
    try:
        return subprocess.run([docker_cli(), "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def running_dockerd(log: Path):
    """A reachable Docker daemon: the running one, else dockerd started here (as root; installing docker.io if
    missing) and stopped on exit. Skips, saying why, only where dockerd cannot start."""
    if shutil.which(docker_cli()) and daemon_up():
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("no Docker daemon is reachable and starting dockerd needs root")
    dockerd = ensure_binary("dockerd", "docker.io")
    with log.open("wb") as out:
        proc = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not daemon_up():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
            pytest.skip(f"dockerd cannot start here:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    try:
        yield
    finally:
        proc.terminate()  # dockerd stops its containers and exits on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def base_image() -> str:
    """captioner-base:<recipe hash>, made by debootstrap unless an image with that tag exists already."""
    ensure_binary("debootstrap", "debootstrap")
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "docker-base.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, DOCKER=docker_cli()),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def wheelhouse() -> Path:
    """deploy/wheelhouse/ filled from this interpreter's environment (the image gets the versions tested here)."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "docker-wheels.sh"), sys.executable],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return REPO / "deploy" / "wheelhouse"


def build(
    tag: str,
    dockerfile: Path,
    context: Path,
    network: str | None = None,
    timeout: float = 1200,
    **build_args: str,
) -> float:
    """``docker build`` (BuildKit) -> seconds taken. ``network="host"``: apt in the build reaches the host's mirror
    (the captioner image needs no network: its packages come from the wheelhouse)."""
    started = time.monotonic()
    args = [arg for k, v in build_args.items() for arg in ("--build-arg", f"{k}={v}")]
    args += ["--network", network] if network else []
    docker("build", "-f", str(dockerfile), "-t", tag, *args, str(context), timeout=timeout)
    return time.monotonic() - started


def inspect(obj: str) -> dict:
    return json.loads(docker("inspect", obj).stdout)[0]


def health(container: str) -> str | None:
    return (inspect(container)["State"].get("Health") or {}).get("Status")


def image_size_mb(image: str) -> float:
    return round(inspect(image)["Size"] / 1e6, 1)
