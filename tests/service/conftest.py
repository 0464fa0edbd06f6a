"""Service fixtures: the app built around the tiny random-weight bundle (tests/conftest.py), driven by TestClient.

``make_client(**settings)`` builds a fresh app (its own cache, limiter and metrics) with any settings changed;
the captioner is loaded once per session and injected, so each app starts in well under a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The test modules import their input builders as ``service_inputs`` (test folders are not packages).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastapi.testclient import TestClient
from service_helpers import free_port, service_settings

from captioner import loading
from captioner.decode.captioner import Captioner
from captioner.service.app import create_app
from captioner.service.settings import Settings  # noqa: F401


@pytest.fixture(scope="session")
def service_captioner(tiny_bundle) -> Captioner:
    return loading.load(tiny_bundle, threads=1)


@pytest.fixture
def make_client(tiny_bundle, service_captioner) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(captioner: Captioner | None = service_captioner, **overrides) -> TestClient:
        app = create_app(service_settings(tiny_bundle, **overrides), captioner=captioner)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()  # runs the lifespan: model warm-up, readiness
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the shared rate limit and cache tests."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.skip("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def temp_listing(tmp_path, monkeypatch) -> Callable[[], set[str]]:
    """Names in this test's own temp folder, to check that no request leaves (or writes) a temp file.

    The folder is private (tempfile's and TMPDIR), so other processes writing the system temp folder at the
    same time (CI jobs, pip) cannot make the check fail; the app under test runs in this process."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return lambda: set(os.listdir(folder))
