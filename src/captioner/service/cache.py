"""Result cache: sha256(image bytes) + decode options + model version (+ caller) -> caption result (a dict).

With API keys, entries are namespaced by the caller (a digest of its key), so one caller cannot learn from
``X-Cache: HIT`` (or from timing) which images another caller sent; without keys, callers share one namespace.

In-memory LRU by default; Redis when ``redis_url`` is set, so that several instances share results (with a
logged fallback to memory if Redis cannot be reached). ``SingleFlight`` makes identical concurrent requests
compute once: the first one runs, the others wait for its future.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, TypeVar

from captioner.decode.options import DecodeOptions
from captioner.service.redis_guard import RedisGuard

log = logging.getLogger("captioner.service")
T = TypeVar("T")


def cache_key(image: bytes, options: DecodeOptions, model_version: str, caller: str = "") -> str:
    """Hex sha256 over the image bytes, the canonical options JSON, the model version and the caller's id
    (security.caller_id; "" when the service has no keys, which gives the same keys as before namespacing)."""
    h = hashlib.sha256(image)
    h.update(json.dumps(options.to_dict(), sort_keys=True).encode())
    h.update(model_version.encode())
    if caller:
        h.update(b"\0" + caller.encode())
    return h.hexdigest()


class ResultCache(Protocol):
    backend: str

    def get(self, key: str) -> dict | None: ...

    def set(self, key: str, value: dict) -> None: ...

    def size(self) -> int | None: ...


class NoCache:
    backend = "none"

    def get(self, key: str) -> dict | None:
        return None

    def set(self, key: str, value: dict) -> None:
        pass

    def size(self) -> int | None:
        return 0


class MemoryCache:
    """Thread-safe LRU of at most ``max_entries`` results."""

    backend = "memory"

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._data: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def set(self, key: str, value: dict) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def size(self) -> int | None:
        return len(self._data)


class RedisCache:
    """Results as JSON strings with a TTL, shared by every instance; eviction beyond that is Redis's maxmemory
    policy. While Redis is unreachable, results go to and come from a local LRU instead (RedisGuard)."""

    backend = "redis"
    prefix = "captioner:cache:"

    def __init__(self, client, ttl_s: int, max_entries: int = 1024):
        self.client, self.ttl_s = client, ttl_s
        self.local = MemoryCache(max_entries)
        self.guard = RedisGuard("cache")

    def get(self, key: str) -> dict | None:
        raw = self.guard.call(lambda: self.client.get(self.prefix + key), lambda: self.local.get(key))
        return json.loads(raw) if isinstance(raw, bytes | str) else raw

    def set(self, key: str, value: dict) -> None:
        self.guard.call(
            lambda: self.client.set(self.prefix + key, json.dumps(value), ex=self.ttl_s),
            lambda: self.local.set(key, value),
        )

    def size(self) -> int | None:
        return None  # unknown without a scan, and shared with other instances anyway


def make_cache(max_entries: int, redis_client=None, ttl_s: int = 86_400) -> ResultCache:
    if max_entries <= 0:
        return NoCache()
    if redis_client is not None:
        return RedisCache(redis_client, ttl_s, max_entries)
    return MemoryCache(max_entries)


class SingleFlight:
    """key -> the Future of the one computation in progress for it."""

    def __init__(self) -> None:
        self._inflight: dict[str, Future] = {}
        self._lock = threading.Lock()

    def join_or_start(self, key: str, start: Callable[[], Future[T]]) -> tuple[Future[T], bool]:
        """Return (future, started_here). ``start`` is called under the lock only when no computation for
        ``key`` is running; if it raises (queue full), nothing is registered."""
        with self._lock:
            running = self._inflight.get(key)
            if running is not None:
                return running, False
            future = start()
            self._inflight[key] = future
        future.add_done_callback(lambda f: self._forget(key, f))
        return future, True

    def _forget(self, key: str, future: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    def __len__(self) -> int:
        return len(self._inflight)
