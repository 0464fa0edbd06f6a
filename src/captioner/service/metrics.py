"""Prometheus metrics, in a registry of the app's own (two apps in one process never share counters)."""

from __future__ import annotations

import resource
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "captioner_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "captioner_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference = Histogram(
            "captioner_inference_duration_seconds",
            "Decode + encode + search time of one inference job",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.cache = Counter("captioner_cache_lookups", "Result cache lookups", ["result"], registry=r)
        self.rate_limited = Counter(
            "captioner_rate_limited", "Requests refused by the rate limiter", registry=r
        )
        self.rejected = Counter(
            "captioner_rejected_uploads", "Uploads refused, by reason", ["reason"], registry=r
        )
        self.overloaded = Counter(
            "captioner_overloaded", "Requests refused because the queue was full", registry=r
        )
        self.auth_failures = Counter(
            "captioner_auth_failures", "Requests refused for a missing/bad API key", registry=r
        )
        self.auth_throttled = Counter(
            "captioner_auth_throttled",
            "Requests refused unchecked because their client IP spent its budget of failed API-key attempts",
            registry=r,
        )
        self.model_switches = Counter(
            "captioner_model_switches",
            "Model switches by outcome (switched, refused, rolled_back)",
            ["outcome"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "captioner_client_disconnects",
            "Requests whose client closed the connection before they were read (status 499 in the access log)",
            registry=r,
        )
        self.upload_buffer = Gauge(
            "captioner_upload_buffer_bytes",
            "Bytes reserved by uploads being received or captioned (at most CAPTIONER_MAX_UPLOAD_BUFFER_BYTES)",
            registry=r,
        )
        self.inflight = Gauge("captioner_inference_inflight", "Inference jobs queued or running", registry=r)
        self.ready = Gauge("captioner_ready", "1 when the model is loaded and warmed", registry=r)

    def observe_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(duration_s)

    def cache_lookup(self, hit: bool) -> None:
        self.cache.labels("hit" if hit else "miss").inc()

    def rejected_upload(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ProcessStats:
    """This process's RSS and CPU use, for /health: psutil if installed, else /proc and resource."""

    def __init__(self) -> None:
        self._cpu = (time.monotonic(), _cpu_seconds())
        self._cpu_lock = threading.Lock()

    def snapshot(self) -> dict:
        """RSS bytes and CPU percent (of one core) since the previous call; psutil if installed, else /proc."""
        try:
            import psutil

            proc = psutil.Process()
            return {
                "rss_bytes": proc.memory_info().rss,
                "cpu_percent": proc.cpu_percent(interval=None),
                "threads": proc.num_threads(),
                "source": "psutil",
            }
        except ImportError:
            pass
        rss = None
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
        except OSError:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, Linux reports KiB
        with self._cpu_lock:
            now, cpu = time.monotonic(), _cpu_seconds()
            last_wall, last_cpu = self._cpu
            self._cpu = (now, cpu)
        percent = 100.0 * (cpu - last_cpu) / max(now - last_wall, 1e-6)
        return {
            "rss_bytes": rss,
            "cpu_percent": round(percent, 1),
            "threads": threading.active_count(),
            "source": "proc",
        }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
