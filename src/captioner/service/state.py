"""Everything one app instance holds: settings, the captioner, cache, limiter, keys, pool, metrics, readiness."""

from __future__ import annotations

import logging
import resource
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from captioner.decode.batcher import MicroBatcher, QueueFull
from captioner.decode.captioner import Captioner, CaptionResult
from captioner.loading import load
from captioner.service.cache import ResultCache, SingleFlight, connect_redis, make_cache
from captioner.service.inference import InferencePool
from captioner.service.metrics import Metrics
from captioner.service.problems import ServiceError
from captioner.service.ratelimit import make_rate_limiter
from captioner.service.security import ApiKeys
from captioner.service.settings import Settings

log = logging.getLogger("captioner.service")


def load_captioner(settings: Settings) -> Captioner:
    """The model the settings name: the original format if MODEL_PATH is set, else a bundle (default: shipped)."""
    common = {
        "threads": settings.threads,
        "max_pixels": settings.max_image_pixels,
        "decoder_backend": settings.decoder_backend,
    }
    if settings.original:
        return load(
            model=settings.model_path,
            tokenizer=settings.tokenizer_path,
            weights=settings.weights_path,
            encoder=settings.encoder_path,
            **common,
        )
    return load(settings.bundle_path, **common)


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    captioner: Captioner | None = None
    ready: bool = False
    load_error: str | None = None
    started: float = field(default_factory=time.time)
    cache: ResultCache = None  # type: ignore[assignment]
    flights: SingleFlight = field(default_factory=SingleFlight)

    def __post_init__(self) -> None:
        s = self.settings
        redis_client = connect_redis(s.redis_url) if s.redis_url else None
        self.redis_backend = redis_client is not None
        self.cache = make_cache(s.cache_max_entries, redis_client, s.cache_ttl_s)
        self.limiter = make_rate_limiter(s.rate_limit_per_minute, s.burst, redis_client)
        self.api_keys = ApiKeys(s.api_keys_sha256, s.api_keys_file)
        # With micro-batching, pool threads only decode images and wait on the batcher, so every queued
        # request gets one (max_queue bounds them); the batcher's single worker does the heavy compute.
        workers = s.max_queue if s.microbatch_max_size > 1 else s.inference_workers
        self.pool = InferencePool(s.max_queue, workers, s.request_timeout_s, self.metrics.inflight.set)
        self.batcher: MicroBatcher | None = None
        self._cpu = (time.monotonic(), _cpu_seconds())
        self._cpu_lock = threading.Lock()

    def load_and_warm(self) -> None:
        """Load the model (unless injected), caption one blank image, then mark ready. Raises on failure."""
        try:
            if self.captioner is None:
                start = time.perf_counter()
                self.captioner = load_captioner(self.settings)
                log.info("model loaded in %.1f s: %s", time.perf_counter() - start, self.captioner.model_info)
            self.captioner.caption_images(
                [Image.new("RGB", (64, 64), (127, 127, 127))], self.settings.default_options()
            )
            if self.settings.microbatch_max_size > 1:
                self.batcher = MicroBatcher(
                    self.captioner,
                    max_batch_size=self.settings.microbatch_max_size,
                    max_wait_ms=self.settings.microbatch_max_wait_ms,
                    max_queue=self.settings.max_queue,
                )
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            raise
        self.ready = True
        self.metrics.ready.set(1)

    def caption_one(self, image, options) -> CaptionResult:
        """One decoded image -> its result, through the micro-batcher when enabled (blocks the calling thread)."""
        if self.batcher is None:
            return self.captioner.caption_images([image], options)[0]
        try:
            future = self.batcher.submit(image, options)
        except QueueFull:
            raise ServiceError(
                503, "overloaded", "the server is busy: too many images waiting; retry in a moment",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        return future.result()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close(timeout=5)
        self.pool.shutdown()

    def model_info(self) -> dict:
        if self.captioner is None:
            return {}
        info = self.captioner.model_info
        return info.to_dict() if info is not None else {"version": self.captioner.version}

    def process_stats(self) -> dict:
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
