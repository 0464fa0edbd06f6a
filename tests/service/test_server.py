"""The production server (service/server.py) as a real subprocess, driven with raw sockets: request-head deadline
and size limit, body deadline, keep-alive idle timeout, the upload byte budget, client disconnects mid-upload and
which peers may set X-Forwarded-For. Timeouts are made small through the environment so that this takes seconds.

Each test sends from its own loopback source address (127.0.0.x), so that the per-IP rate limit buckets of one
test never touch another's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_helpers import free_port

from captioner.service.server import server_config
from captioner.service.settings import Settings

HEADER_TIMEOUT_S, BODY_TIMEOUT_S, KEEPALIVE_S = 1.5, 1.5, 1.0
MAX_UPLOAD, MAX_BATCH = 100_000, 2
BUDGET = MAX_UPLOAD * MAX_BATCH + 64 * 1024  # the smallest allowed: one whole batch body
BURST = 4


class Server:
    """``python -m captioner.service.app`` on a free port with the given settings; its stderr in a file."""

    def __init__(self, tiny_bundle: Path, folder: Path, **settings: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"server-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
        env.pop("FORWARDED_ALLOW_IPS", None)
        env.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            CAPTIONER_BUNDLE_PATH=str(tiny_bundle),
            CAPTIONER_THREADS="1",
            CAPTIONER_INFERENCE_WORKERS="1",
            **settings,
        )
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "captioner.service.app"], cwd=folder, env=env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def connect(self, source: str) -> socket.socket:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", self.port))
        return sock

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory) -> Iterator[Server]:
    server = Server(
        tiny_bundle,
        tmp_path_factory.mktemp("server"),
        CAPTIONER_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        CAPTIONER_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        CAPTIONER_KEEPALIVE_TIMEOUT_S=str(KEEPALIVE_S),
        CAPTIONER_MAX_HEADER_BYTES="8192",
        CAPTIONER_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        CAPTIONER_MAX_BATCH_IMAGES=str(MAX_BATCH),
        CAPTIONER_MAX_UPLOAD_BUFFER_BYTES=str(BUDGET),
        CAPTIONER_RATE_LIMIT_PER_MINUTE="1",
        CAPTIONER_RATE_LIMIT_BURST=str(BURST),
    )
    yield server
    server.stop()


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool, float]:
    """(bytes received, whether the server closed the connection, seconds waited) within ``timeout_s``."""
    start = time.monotonic()
    data = b""
    while (left := timeout_s - (time.monotonic() - start)) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True, time.monotonic() - start
        if not chunk:
            return data, True, time.monotonic() - start
        data += chunk
    return data, False, time.monotonic() - start


def problem_of(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def multipart_head(path: str, length: int, boundary: str = "b0undary") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def part_start(boundary: str = "b0undary") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()


@pytest.mark.slow
def test_headers_trickled_one_line_at_a_time_get_408_and_close(server):
    sock = server.connect("127.0.0.2")
    sock.sendall(b"GET /livez HTTP/1.1\r\n")
    start = time.monotonic()
    data, closed = b"", False
    for i in range(20):  # one header line every 0.5 s: each line is in time, the whole head is not
        data, closed, _ = read_until_closed(sock, 0.5)
        if data or closed:
            break
        sock.sendall(f"X-Line-{i}: {i}\r\n".encode())
    elapsed = time.monotonic() - start
    if not closed:
        more, closed, _ = read_until_closed(sock, 1.0)
        data += more
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert problem_of(data)[1]["type"].endswith("request-timeout")
    assert closed and elapsed < HEADER_TIMEOUT_S + 2.0


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed(server):
    sock = server.connect("127.0.0.2")
    data, closed, waited = read_until_closed(sock, HEADER_TIMEOUT_S + 3.0)
    assert closed and data == b"" and waited >= HEADER_TIMEOUT_S - 0.2


@pytest.mark.slow
def test_oversized_request_head_is_refused(server):
    sock = server.connect("127.0.0.2")
    with contextlib.suppress(
        BrokenPipeError, ConnectionResetError
    ):  # closed while still sending: refused too
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n")
    data, closed, _ = read_until_closed(sock, 5.0)
    assert closed
    assert data == b"" or data.startswith(b"HTTP/1.1 431"), data[:200]
    # A normal head on a new connection is still fine.
    assert httpx.get(server.url + "/livez", headers={"X-Small": "a" * 1000}).status_code == 200


@pytest.mark.slow
def test_stalled_upload_gets_408_and_the_connection_is_closed(server):
    sock = server.connect("127.0.0.2")
    sock.sendall(multipart_head("/generate-caption/", 5000) + part_start() + b"\xff\xd8" + b"x" * 100)
    data, closed, waited = read_until_closed(sock, BODY_TIMEOUT_S + 5.0)
    status, problem = problem_of(data)
    assert status == 408 and problem["type"].endswith("request-timeout")
    assert "CAPTIONER_BODY_TIMEOUT_S" in problem["detail"]
    assert closed and waited < BODY_TIMEOUT_S + 3.0


@pytest.mark.slow
def test_idle_keepalive_connection_is_closed(server):
    sock = server.connect("127.0.0.2")
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
    data, closed, _ = read_until_closed(sock, 0.5)
    assert data.startswith(b"HTTP/1.1 200") and not closed  # kept alive...
    more, closed, waited = read_until_closed(sock, KEEPALIVE_S + 3.0)
    assert closed and more == b""  # ...until idle for the keep-alive timeout
    assert waited < KEEPALIVE_S + 2.0


@pytest.mark.slow
def test_uploads_past_the_buffer_budget_get_503_at_once(server, photo_files):
    # A stalled upload declaring 150 kB holds its reservation; a second one does not fit the budget.
    stalled = server.connect("127.0.0.4")
    stalled.sendall(multipart_head("/generate-caption/", 150_000) + part_start())
    deadline = time.monotonic() + 5
    while server.metric("captioner_upload_buffer_bytes") < 150_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("captioner_upload_buffer_bytes") == 150_000
    second = server.connect("127.0.0.4")
    second.sendall(multipart_head("/generate-caption/", 150_000) + part_start())
    data, _, waited = read_until_closed(second, 1.0)
    status, problem = problem_of(data)
    assert status == 503 and problem["type"].endswith("uploads-busy") and waited < 1.0
    # Once the stalled upload hits the body deadline, its bytes are free again.
    data, _, _ = read_until_closed(stalled, BODY_TIMEOUT_S + 5.0)
    assert problem_of(data)[0] == 408
    assert server.metric("captioner_upload_buffer_bytes") == 0
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.4")) as client:
        photo = photo_files[0].read_bytes()[:MAX_UPLOAD]
        r = client.post(server.url + "/generate-caption/", files={"file": ("p.jpg", photo)})
    assert r.status_code != 503, r.text


@pytest.mark.slow
def test_client_disconnect_mid_upload_is_not_a_server_error(server):
    before = server.metric("captioner_client_disconnects_total")
    sock = server.connect("127.0.0.3")
    sock.sendall(multipart_head("/generate-caption/", 50_000) + part_start() + b"\xff\xd8" + b"x" * 20_000)
    time.sleep(0.3)
    sock.close()
    deadline = time.monotonic() + 5
    while server.metric("captioner_client_disconnects_total") <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("captioner_client_disconnects_total") == before + 1
    metrics = httpx.get(server.url + "/metrics").text
    assert not re.search(r'captioner_http_requests_total\{[^}]*status="500"', metrics)  # (503s: other tests)
    assert re.search(r'captioner_http_requests_total\{[^}]*route="/generate-caption/",status="499"', metrics)
    lines = server.log_lines()
    assert not any("exception" in line or line["level"] in ("error", "critical") for line in lines)
    assert "Traceback" not in server.log.read_text()
    access = [line for line in lines if line.get("logger") == "captioner.service.access"]
    assert any(line["status"] == 499 and line["client"] == "127.0.0.3" for line in access)


def hit(url: str, source: str, forwarded_for: str | None = None) -> int:
    """One request to a rate-limited route (not multipart: answered 422 once past the limiter)."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
        return client.post(url + "/generate-caption/", content=b"x", headers=headers).status_code


def random_ip() -> str:
    raw = uuid.uuid4().bytes
    return f"203.{raw[0]}.{raw[1]}.{raw[2]}"


@pytest.mark.slow
def test_forwarded_for_from_a_loopback_peer_is_ignored_by_default(server):
    # 127.0.0.1 itself: the peer uvicorn trusts by default (the only rate-limited requests from it in this module).
    statuses = [hit(server.url, "127.0.0.1") for _ in range(BURST)]
    assert 429 not in statuses
    assert [hit(server.url, "127.0.0.1", random_ip()) for _ in range(5)] == [429] * 5


@pytest.mark.slow
def test_forwarded_for_is_honoured_from_a_configured_proxy(tiny_bundle, tmp_path):
    proxied = Server(
        tiny_bundle,
        tmp_path,
        CAPTIONER_FORWARDED_ALLOW_IPS="127.0.0.9",
        CAPTIONER_RATE_LIMIT_PER_MINUTE="1",
        CAPTIONER_RATE_LIMIT_BURST="2",
    )
    try:
        # From the proxy: each forwarded client has a bucket of its own.
        assert 429 not in [hit(proxied.url, "127.0.0.9", random_ip()) for _ in range(6)]
        # From anyone else: the header is ignored, the peer's bucket runs out.
        assert [hit(proxied.url, "127.0.0.6", random_ip()) for _ in range(4)] == [422, 422, 429, 429]
    finally:
        proxied.stop()


def test_server_config_trusts_no_proxy_unless_configured(monkeypatch):
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    monkeypatch.delenv("CAPTIONER_FORWARDED_ALLOW_IPS", raising=False)
    config = server_config(None, Settings(_env_file=None))
    assert config.proxy_headers is False and config.limit_concurrency == Settings().max_connections
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "172.28.0.10, 10.8.0.0/24")  # uvicorn's variable, still read
    settings = Settings(_env_file=None)
    assert settings.forwarded_allow_ips == ["172.28.0.10", "10.8.0.0/24"]
    config = server_config(None, settings)
    assert config.proxy_headers is True and config.forwarded_allow_ips == "172.28.0.10,10.8.0.0/24"


@pytest.mark.parametrize(
    "values, match",
    [
        ({"forwarded_allow_ips": ["nginx"]}, "not an IP address or network"),
        ({"max_upload_buffer_bytes": 10_000_000}, "smaller than one whole batch body"),
        ({"header_timeout_s": 0}, "greater than 0"),
    ],
)
def test_unsafe_server_settings_are_refused(values, match):
    with pytest.raises(ValueError, match=match):
        Settings(_env_file=None, **values)


@pytest.mark.slow
def test_a_stopping_server_answers_a_request_on_an_idle_kept_alive_connection(tiny_bundle, tmp_path):
    """SIGTERM with a kept-alive connection idle (a reverse proxy's): a request sent on it just after is answered
    (Connection: close), not dropped; nginx does not resend a POST it has sent, so a drop was a 502."""
    import signal

    server = Server(tiny_bundle, tmp_path, CAPTIONER_KEEPALIVE_TIMEOUT_S="5")
    try:
        sock = server.connect("127.0.0.60")
        request = b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n"
        sock.sendall(request)
        first, closed, _ = read_until_closed(sock, 1.0)
        assert first.startswith(b"HTTP/1.1 200") and not closed
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the server has begun to stop: it accepts no new connection
        with pytest.raises(OSError):
            server.connect("127.0.0.61")
        sock.sendall(request)
        second, closed, _ = read_until_closed(sock, 5.0)
        assert second.startswith(b"HTTP/1.1 200"), second
        assert b"connection: close" in second.lower() and closed
        assert server.proc.wait(10) in (0, -signal.SIGTERM)  # then it stops (uvicorn re-raises the signal)
    finally:
        if server.proc.poll() is None:
            server.stop()
