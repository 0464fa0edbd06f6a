"""Redis for several instances, and what happens when it is away: connect (with a PING) and a guard that
falls back to this instance's memory during an outage instead of failing requests (cache, rate limits)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("captioner.service")
T = TypeVar("T")


class RedisGuard:
    """Runs Redis calls unless Redis failed less than ``retry_s`` ago, else the local fallback.

    One warning when an outage starts and one when Redis answers again (not one per request), and no request
    waits on a dead server's timeout more than once per ``retry_s``. redis-py reconnects by itself, so an
    instance that started while Redis was down joins it as soon as it answers.
    """

    def __init__(self, what: str, retry_s: float = 5.0):
        self.what, self.retry_s = what, retry_s
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._down

    def call(self, fn: Callable[[], T], fallback: Callable[[], T]) -> T:
        if time.monotonic() < self._down_until:
            return fallback()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - any redis/network error degrades, never fails a request
            with self._lock:
                if not self._down:
                    log.warning(
                        "redis %s failed (%s); using this instance's memory until it answers", self.what, exc
                    )
                self._down, self._down_until = True, time.monotonic() + self.retry_s
            return fallback()
        if self._down:
            with self._lock:
                if self._down:
                    log.warning("redis %s answers again; shared state restored", self.what)
                    self._down = False
        return result


def connect_redis(url: str):
    """A redis client that answered PING, or None (with a warning) if the package or the server is missing."""
    try:
        import redis
    except ImportError:
        log.warning("CAPTIONER_REDIS_URL is set but the 'redis' package is not installed; using memory")
        return None
    try:
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    except ValueError as exc:
        log.warning("invalid CAPTIONER_REDIS_URL %s (%s); using memory", _safe(url), exc)
        return None
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot reach Redis at %s yet (%s); using memory until it answers", _safe(url), exc)
    return client


def _safe(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
