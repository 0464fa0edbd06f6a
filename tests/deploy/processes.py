"""Real processes on loopback for the deployment tests: free ports, installing a missing Debian package, waiting
for a process to come up, stopping it, rendering deploy/nginx/captioner.conf.template for loopback replicas, and
JPEG photos to send."""

from __future__ import annotations

import io
import os
import shutil
import socket
import string
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "nginx" / "captioner.conf.template"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_binary(path: str, package: str) -> str:
    """The binary, installing its Debian package first when missing and we are root; else skip with why."""
    found = shutil.which(path) or (path if Path(path).is_file() else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, timeout=300
        )
        found = shutil.which(path) or (path if Path(path).is_file() else None)
        if found:
            return found
    pytest.skip(f"{path} is missing and could not be installed (apt-get install -y {package} as root)")


def wait_until(
    check, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"{what}: exited with {proc.returncode}\n{tail}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not up within {timeout_s} s")


def stop(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def render_nginx(folder: Path, port: int, upstream_ports: list[int]) -> Path:
    """The shared template for loopback upstreams, inside a main config that keeps pid, logs and temp files in
    ``folder`` (nginx runs as a child process in the foreground, not as the system service)."""
    servers = "\n    ".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in upstream_ports)
    snippet = string.Template(TEMPLATE.read_text()).safe_substitute(
        CAPTIONER_UPSTREAM_SERVERS=servers,
        NGINX_PORT=f"127.0.0.1:{port}",
        NGINX_ACCESS_LOG=folder / "access.log",
    )
    (folder / "captioner.conf").write_text(snippet)
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, workers would switch to 'nobody', who cannot enter pytest's private temp folder.
    user = "user root root;" if os.geteuid() == 0 else ""
    main = f"""{user}
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
{temp}
    include {folder / "captioner.conf"};
}}
"""
    conf = folder / "nginx.conf"
    conf.write_text(main)
    return conf


def photo_jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A smooth random RGB photo as JPEG bytes (the same recipe as conftest.make_photo)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    buffer = io.BytesIO()
    Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8), "RGB").save(
        buffer, "JPEG", quality=90
    )
    return buffer.getvalue()
