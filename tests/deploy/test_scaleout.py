"""Scale-out for real on loopback: 3 service processes behind a real nginx (deploy/nginx/captioner.conf.template)
sharing a real redis-server, driven with bounded load through nginx.

One test, in phases on the same cluster (starting it is most of the cost):
  spread      requests are answered by all three instances (X-Instance-ID)
  rate limit  one client's bucket is shared: the instances together admit ~burst, not 3 x burst
  cache       a caption computed on one instance is a cache HIT on another
  drain       SIGTERM to one instance mid-load: every request still gets its 200 (uvicorn finishes in-flight
              requests, nginx resends the ones whose connection the closing instance refused), the others keep
              answering
  redis gone  redis-server stopped mid-load: requests keep succeeding on local limits, with a logged warning
The figures are printed (pytest -s, or the CI log on failure) and written to bench/results/scaleout.json.

Clients: nginx forwards $remote_addr and the service (trusting X-Forwarded-For from nginx at 127.0.0.1 only,
CAPTIONER_FORWARDED_ALLOW_IPS) rate-limits per client IP, so
each simulated client binds its own loopback source address (127.x.y.z all reach 127.0.0.1 on Linux).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from processes import ensure_binary, free_port, photo_jpeg, render_nginx, stop, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "nginx" / "captioner.conf.template"
RESULTS = REPO / "bench" / "results" / "scaleout.json"

BURST, PER_MINUTE = 10, 60  # the shared bucket: 10 at once, then 1 per second
PARAMS = {"strategy": "greedy"}


def jpeg_variant(base: bytes, tag: str) -> bytes:
    """The same pixels with a JPEG comment naming ``tag``: a different cache key, the same caption work."""
    comment = tag.encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]


class Load:
    """Bounded load through nginx: each request from its own client address, with timeouts; results kept."""

    def __init__(self, url: str, base_jpeg: bytes):
        self.url, self.base = url, base_jpeg
        self._n = 0
        self._lock = threading.Lock()

    def address(self) -> str:
        with self._lock:
            self._n += 1
            n = self._n
        return f"127.{10 + n // 62500}.{(n // 250) % 250}.{n % 250 + 2}"  # never 127.0.0.1 (nginx itself)

    def post(self, tag: str, client: str | None = None, image: bytes | None = None) -> dict:
        import httpx

        transport = httpx.HTTPTransport(local_address=client or self.address())
        data = image if image is not None else jpeg_variant(self.base, tag)
        started = time.monotonic()
        try:
            with httpx.Client(transport=transport, timeout=20.0) as c:
                r = c.post(self.url + "/generate-caption/", params=PARAMS, files={"file": ("p.jpg", data)})
            out = {
                "status": r.status_code,
                "instance": r.headers.get("X-Instance-ID"),
                "cache": r.headers.get("X-Cache"),
            }
        except httpx.HTTPError as exc:
            out = {"status": type(exc).__name__, "instance": None, "cache": None}
        return out | {"tag": tag, "started": started, "ended": time.monotonic()}

    def run(self, tags: list[str], threads: int, client: str | None = None, on_result=None) -> list[dict]:
        """POST one request per tag from ``threads`` threads; ``on_result(results_so_far)`` after each."""
        results: list[dict] = []
        pending = iter(tags)
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    tag = next(pending, None)
                if tag is None:
                    return
                result = self.post(tag, client)
                with lock:
                    results.append(result)
                    snapshot = list(results)
                if on_result:
                    on_result(snapshot)

        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=120)
        assert len(results) == len(tags), "load threads did not finish"
        return results


def per_instance(results: list[dict], status=200) -> dict[str, int]:
    return dict(sorted(Counter(r["instance"] for r in results if r["status"] == status).items()))


def test_three_instances_behind_nginx_with_shared_redis(tmp_path, tiny_bundle):
    import httpx
    import redis

    nginx_bin = ensure_binary("/usr/sbin/nginx", "nginx")
    redis_bin = ensure_binary("redis-server", "redis-server")
    figures: dict = {"burst": BURST, "per_minute": PER_MINUTE}
    started = time.monotonic()
    with ExitStack() as cleanup:
        # -- Redis --
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cleanup.callback(stop, redis_proc)
        redis_client = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=2)
        wait_until(redis_client.ping, 15, "redis-server", redis_proc)

        # -- three instances, each its own process, as in production: python -m captioner.service.app --
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
        for original in (
            "MODEL_PATH",
            "WEIGHTS_PATH",
            "TOKENIZER_PATH",
            "HOST",
            "PORT",
            "FORWARDED_ALLOW_IPS",
        ):
            env.pop(original, None)
        instances = {}
        for i in range(3):
            port, log = free_port(), tmp_path / f"instance{i}.log"
            log_file = cleanup.enter_context(log.open("wb"))
            proc = subprocess.Popen(
                [sys.executable, "-m", "captioner.service.app"],
                env=env | {
                    "PORT": str(port), "CAPTIONER_INSTANCE_ID": f"i{i}", "CAPTIONER_BUNDLE_PATH": str(tiny_bundle),
                    "CAPTIONER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "CAPTIONER_THREADS": "1",
                    "CAPTIONER_RATE_LIMIT_PER_MINUTE": str(PER_MINUTE), "CAPTIONER_RATE_LIMIT_BURST": str(BURST),
                    "CAPTIONER_INFERENCE_WORKERS": "1", "CAPTIONER_LOG_LEVEL": "info",
                    "CAPTIONER_FORWARDED_ALLOW_IPS": "127.0.0.1",  # nginx, the only proxy
                },
                cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
            cleanup.callback(stop, proc)
            instances[f"i{i}"] = {"port": port, "proc": proc, "log": log}
        for name, inst in instances.items():
            ready = f"http://127.0.0.1:{inst['port']}/readyz"
            wait_until(
                lambda u=ready: httpx.get(u, timeout=2).status_code == 200,
                60,
                name,
                inst["proc"],
                inst["log"],
            )

        # -- nginx, the shared template rendered for loopback --
        nginx_port = free_port()
        conf = render_nginx(tmp_path, nginx_port, [inst["port"] for inst in instances.values()])
        check = subprocess.run([nginx_bin, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(
            [nginx_bin, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cleanup.callback(stop, nginx)
        url = f"http://127.0.0.1:{nginx_port}"
        wait_until(lambda: httpx.get(url + "/livez", timeout=2).status_code == 200, 15, "nginx", nginx)
        figures["startup_s"] = round(time.monotonic() - started, 1)
        load = Load(url, photo_jpeg((160, 120), seed=5))

        # -- 1. spread --
        spread = load.run([f"spread-{i}" for i in range(30)], threads=3)
        assert [r["status"] for r in spread] == [200] * 30, Counter(r["status"] for r in spread)
        figures["requests_per_instance"] = per_instance(spread)
        assert set(figures["requests_per_instance"]) == {"i0", "i1", "i2"}
        assert min(figures["requests_per_instance"].values()) >= 3

        # -- 2. one client's rate limit holds across the three instances --
        t0 = time.monotonic()
        limited = load.run([f"limit-{i}" for i in range(36)], threads=6, client="127.0.9.9")
        elapsed = time.monotonic() - t0
        allowed = sum(r["status"] == 200 for r in limited)
        refused = sum(r["status"] == 429 for r in limited)
        refill = PER_MINUTE / 60 * elapsed
        figures["rate_limit"] = {
            "sent": len(limited), "allowed": allowed, "refused_429": refused, "seconds": round(elapsed, 2),
            "shared_bound": BURST + int(refill) + 1, "per_instance_bound": 3 * BURST + 3 * int(refill),
            "allowed_per_instance": per_instance(limited), "refused_per_instance": per_instance(limited, 429),
        }  # fmt: skip
        assert allowed + refused == len(limited)
        assert BURST <= allowed <= BURST + refill + 1, figures["rate_limit"]
        assert len(per_instance(limited, 429)) >= 2  # every instance enforces the one shared bucket

        # -- 3. a result computed on one instance is served from the cache by another --
        image = jpeg_variant(load.base, "cache-shared")
        cache = [load.post(f"cache-{i}", image=image) for i in range(4)]
        figures["cache"] = [f"{r['instance']}:{r['cache']}" for r in cache]
        assert [r["status"] for r in cache] == [200] * 4
        assert cache[0]["cache"] == "MISS" and all(r["cache"] == "HIT" for r in cache[1:])
        assert any(r["instance"] != cache[0]["instance"] for r in cache[1:])

        # -- 4. SIGTERM to one instance in the middle of the load --
        # Besides the load through nginx, the victim is sent one slow batch request of its own (8 larger images),
        # and SIGTERM goes out while that request is running: it must still be answered in full.
        victim = instances["i2"]
        direct = f"http://127.0.0.1:{victim['port']}"
        batch = [("files", (f"b{k}.jpg", photo_jpeg((640, 480), seed=20 + k))) for k in range(8)]
        kill: dict = {}
        claim = threading.Lock()

        def slow_batch():
            # The multipart body is streamed so that we know when all of it is on the wire: from then on the
            # victim has the request, and SIGTERM must not cut it.
            request = httpx.Request("POST", direct + "/generate-captions/", files=batch)
            body = request.read()

            def stream():
                yield body
                kill["sent"].set()

            headers = {"Content-Type": request.headers["Content-Type"], "Content-Length": str(len(body))}
            t = time.monotonic()
            try:
                r = httpx.post(direct + "/generate-captions/", content=stream(), headers=headers, timeout=30)
                ok = sum(x["error"] is None for x in r.json()["results"]) if r.status_code == 200 else 0
                kill["batch"] = {
                    "status": r.status_code,
                    "items_ok": ok,
                    "started": t,
                    "ended": time.monotonic(),
                }
            except httpx.HTTPError as exc:
                kill["batch"] = {
                    "status": type(exc).__name__,
                    "items_ok": 0,
                    "started": t,
                    "ended": time.monotonic(),
                }
                kill["sent"].set()

        def maybe_kill(results):
            if len(results) < 12 or not claim.acquire(blocking=False):
                return  # too early, or another thread already sends the signal
            kill["sent"] = threading.Event()
            kill["thread"] = threading.Thread(target=slow_batch)
            kill["thread"].start()
            kill["sent"].wait(timeout=10)
            # One /health round trip after the body was sent: the victim's event loop has read the batch request
            # by then (its bytes arrived first). Then wait until inference is running.
            inflight, deadline = 0, time.monotonic() + 10
            while not inflight and time.monotonic() < deadline:
                with suppress(httpx.HTTPError):
                    inflight = httpx.get(direct + "/health", timeout=1).json()["inference"]["inflight"]
                time.sleep(0.005)
            victim["proc"].send_signal(signal.SIGTERM)
            kill.update(at=time.monotonic(), inflight=inflight)

        access_before = len((tmp_path / "access.log").read_text().splitlines())
        drain = load.run([f"drain-{i}" for i in range(60)], threads=4, on_result=maybe_kill)
        exit_code = victim["proc"].wait(timeout=30)
        kill["thread"].join(timeout=30)
        access = [
            json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()[access_before:]
        ]
        after_kill = [r for r in drain if r["ended"] > kill["at"]]
        victim_log = victim["log"].read_text(errors="replace")
        figures["drain"] = {
            "sent": len(drain),
            "ok": sum(r["status"] == 200 for r in drain),
            "losses": sum(r["status"] != 200 for r in drain),
            "victim_inflight_at_sigterm": kill["inflight"],
            "in_flight_batch_at_sigterm": {
                "status": kill.get("batch", {}).get("status"),
                "images_captioned": kill.get("batch", {}).get("items_ok"),
                "finished_s_after_sigterm": round(kill.get("batch", {}).get("ended", 0) - kill["at"], 3),
            },
            "victim_answered_after_sigterm": sum(r["instance"] == "i2" for r in after_kill),
            "answered_after_sigterm_per_instance": per_instance(after_kill),
            "nginx_retries": sum("," in entry["upstream"] for entry in access),
            "victim_exit_code": exit_code,
        }
        assert figures["drain"]["losses"] == 0, Counter(r["status"] for r in drain)
        # The request in flight at SIGTERM was finished, not cut.
        assert kill["inflight"] >= 1 and kill["batch"]["status"] == 200 and kill["batch"]["items_ok"] == 8
        assert kill["batch"]["ended"] > kill["at"], figures["drain"]
        # Graceful, not killed: uvicorn stopped accepting, finished the requests it had, ran the app's shutdown,
        # then re-raised SIGTERM (so the exit status is -15, as for any process that ends on that signal).
        assert exit_code in (0, -signal.SIGTERM), exit_code
        assert "Application shutdown complete" in victim_log, victim_log[-2000:]
        started_after_exit = [r for r in drain if r["started"] > kill["at"] + 3]
        assert all(r["instance"] in ("i0", "i1") for r in started_after_exit)
        assert {"i0", "i1"} <= set(per_instance(after_kill))  # the others keep answering

        # -- 5. Redis goes away mid-load: local limits and no cache, a warning, no errors --
        def stop_redis(results):
            if len(results) == 6:
                stop(redis_proc)

        gone = load.run([f"redis-gone-{i}" for i in range(24)], threads=2, on_result=stop_redis)
        assert redis_proc.poll() is not None
        warnings = {name: _redis_warnings(inst["log"]) for name, inst in instances.items() if name != "i2"}
        t0 = time.monotonic()
        local = load.run([f"local-limit-{i}" for i in range(3 * BURST)], threads=4, client="127.0.8.8")
        local_allowed = sum(r["status"] == 200 for r in local)
        image = jpeg_variant(load.base, "cache-without-redis")
        figures["redis_gone"] = {
            "sent": len(gone),
            "ok": sum(r["status"] == 200 for r in gone),
            "errors": sum(r["status"] != 200 for r in gone),
            "redis_warnings_per_instance": warnings,
            "one_client_allowed_of": [local_allowed, len(local)],
            "local_bound": 2 * (BURST + int(PER_MINUTE / 60 * (time.monotonic() - t0)) + 1),
            "cache_after": [load.post(f"nocache-{i}", image=image)["cache"] for i in range(2)],
        }
        assert figures["redis_gone"]["errors"] == 0, Counter(r["status"] for r in gone)
        assert all(count >= 1 for count in warnings.values()), warnings  # logged, not raised
        assert BURST < local_allowed <= figures["redis_gone"]["local_bound"]  # per-instance buckets, not none
        assert all(r["status"] in (200, 429) for r in local)

    figures["total_s"] = round(time.monotonic() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print("\nscale-out figures:", json.dumps(figures, indent=2))


def _redis_warnings(log: Path) -> int:
    """Warning lines about Redis in an instance's JSON log."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        count += entry.get("level") == "warning" and "redis" in entry.get("message", "")
    return count
