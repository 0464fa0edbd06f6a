"""The service over HTTP on loopback: cold start, memory, and latency/throughput at several concurrencies.

The server is the real app as shipped (``python -m captioner.service.app``) in its own process, serving
``CAPTIONER_BUNDLE_PATH`` with the rate limit and the result cache off, and every request's JPEG made unique
(``unique_jpeg``): the same photos are sent again and again, and a cache hit would measure the cache. The load generator is closed-loop: ``concurrency`` threads, each with its
own keep-alive connection, send POST /generate-caption/ and wait for the answer, until ``requests`` answers or
``max_seconds``, whichever comes first. It runs on the same 2 cores as the server, so it is kept light: the
multipart bodies are built before the clock starts and sent with the standard library's http.client (httpx
cost ~1 ms of CPU per request, which the server then lacks).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.timing import percentiles, proc_status_mb

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mapped_libraries(pid: int) -> dict[str, bool]:
    """Which heavy frameworks the server process has loaded (their shared libraries are mapped)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return {}
    return {
        "tensorflow": "tensorflow" in maps,
        "torch": "/torch/" in maps,
        "onnxruntime": "onnxruntime" in maps,
    }


class Server:
    """``with Server(bundle, env) as s:`` starts the service on a free loopback port and waits until ready."""

    def __init__(self, bundle: Path, env: dict[str, str] | None = None, ready_timeout_s: float = 120.0):
        self.bundle, self.extra_env, self.ready_timeout_s = Path(bundle), env or {}, ready_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.cold_start_s = float("nan")

    def __enter__(self) -> Server:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
        for original in ("MODEL_PATH", "WEIGHTS_PATH", "TOKENIZER_PATH", "HOST", "PORT"):
            env.pop(original, None)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(
                    os.pathsep
                ),
                "CAPTIONER_BUNDLE_PATH": str(self.bundle),
                "CAPTIONER_RATE_LIMIT_PER_MINUTE": "0",
                "CAPTIONER_CACHE_MAX_ENTRIES": "0",
                "CAPTIONER_MAX_QUEUE": "256",
                "CAPTIONER_LOG_LEVEL": "warning",
                **self.extra_env,
            }
        )
        # The shipped server (captioner.service.server: uvicorn + httptools with the connection limits), as
        # `captioner serve` runs it.
        env.update({"HOST": "127.0.0.1", "PORT": str(self.port)})
        args = [sys.executable, "-m", "captioner.service.app"]
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        probe = "/readyz"
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() - started < self.ready_timeout_s:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                    raise RuntimeError(f"the service exited with {self.proc.returncode} before ready:\n{err}")
                try:
                    r = client.get(self.url + probe)
                    if r.status_code == 404 and probe == "/readyz":
                        probe = "/health"  # an older service without a readiness probe
                        continue
                    if r.status_code == 200 and (probe == "/readyz" or r.json().get("readiness", True)):
                        self.cold_start_s = time.perf_counter() - started
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        self.__exit__()
        raise RuntimeError(f"the service was not ready within {self.ready_timeout_s} s")

    def process(self) -> dict:
        """Peak and current RSS (MB) and which frameworks the server has loaded."""
        assert self.proc is not None
        status = proc_status_mb(self.proc.pid)
        return {
            "peak_rss_mb": status.get("VmHWM"),
            "rss_mb": status.get("VmRSS"),
            "libraries": _mapped_libraries(self.proc.pid),
        }

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


def unique_jpeg(data: bytes, i: int) -> bytes:
    """The same JPEG with a comment segment naming request i: identical pixels, different bytes, so neither
    the result cache nor the coalescing of identical in-flight requests can answer it without work."""
    if not data.startswith(b"\xff\xd8"):
        return data
    comment = f"bench request {i}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def multipart_body(name: str, data: bytes, boundary: str) -> bytes:
    """A multipart/form-data body with one file field ``file`` (what a browser or curl -F sends)."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


def load(
    url: str,
    photos: list[tuple[str, bytes]],
    concurrency: int,
    requests: int,
    params: dict,
    max_seconds: float = 60.0,
) -> dict:
    """Closed-loop load: latency percentiles (ms) of the 200 answers, throughput, and the other statuses."""
    import http.client
    from urllib.parse import urlencode, urlsplit

    boundary = "captioner-bench-boundary"
    bodies = []
    for i in range(requests):
        name, data = photos[i % len(photos)]
        bodies.append(multipart_body(name, unique_jpeg(data, i), boundary))
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    path = "/generate-caption/" + (f"?{urlencode(params)}" if params else "")
    host = urlsplit(url)
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    next_index = iter(range(requests))
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=max_seconds)  # keep-alive
        try:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                t = time.perf_counter()
                try:
                    conn.request("POST", path, body=bodies[i], headers=headers)
                    response = conn.getresponse()
                    response.read()
                    status = str(response.status)
                except (OSError, http.client.HTTPException) as exc:
                    status = type(exc).__name__
                    conn.close()  # reconnects on the next request
                ms = (time.perf_counter() - t) * 1000
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == "200":
                        latencies.append(ms)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": sum(statuses.values()),
        "ok": len(latencies),
        "statuses": statuses,
        "seconds": wall,
        "throughput_rps": len(latencies) / wall,
        "latency_ms": percentiles(latencies),
    }


def bench_service(
    bundle: Path,
    photos: list[Path],
    params: dict,
    concurrencies: tuple[int, ...] = (1, 8, 32),
    requests_per_level: dict[int, int] | None = None,
    env: dict[str, str] | None = None,
    max_seconds: float = 60.0,
) -> dict:
    """Start the service, warm it, run each concurrency level, and read its memory before stopping it."""
    data = [(p.name, p.read_bytes()) for p in photos]
    requests_per_level = requests_per_level or {}
    out: dict = {"params": params, "env": env or {}, "levels": {}}
    with Server(bundle, env) as server:
        out["cold_start_s"] = server.cold_start_s
        out["after_ready"] = server.process()
        load(server.url, data, 2, 4, params, max_seconds)  # warm the connections and the code paths
        for c in concurrencies:
            n = requests_per_level.get(c, max(4 * c, 16))
            out["levels"][str(c)] = load(server.url, data, c, n, params, max_seconds)
        out["process"] = server.process()
    return out
