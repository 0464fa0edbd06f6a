"""Plain helpers for the service tests (importable by name; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from captioner.service.settings import Settings


def service_settings(tiny_bundle: Path, **overrides) -> Settings:
    """Settings that ignore the environment's .env and default to no rate limit (tests opt in)."""
    values = {"bundle_path": tiny_bundle, "rate_limit_per_minute": 0, "inference_workers": 1}
    values.update(overrides)
    return Settings(_env_file=None, **values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(response, status: int, slug: str | None = None) -> dict:
    """An RFC 7807 problem answer with this status (and type slug), no traceback; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS and body["status"] == status and body["detail"]
    assert "Traceback" not in response.text
    if slug:
        assert body["type"] == f"urn:captioner:problem:{slug}", body
    return body


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """The app on a real uvicorn server in a thread, on a free loopback port: its base URL while open."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)
