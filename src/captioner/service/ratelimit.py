"""Token-bucket rate limiting per client (API key if any, else IP), in memory or in Redis.

A bucket holds at most ``burst`` tokens and refills at ``per_minute / 60`` tokens per second; each request
takes one (``hit``). ``peek`` says whether a token is there without taking it (the API-key failure budget is
checked on every attempt but spent only by failures). In Redis the whole read-refill-take step is one Lua script (atomic, clocked by the Redis server's
TIME), so several instances behind a load balancer share one limit per client.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from captioner.service.redis_guard import RedisGuard

log = logging.getLogger("captioner.service")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # bucket size
    remaining: int  # whole tokens left after this request
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until one token is available (0 if allowed)

    def headers(self) -> dict[str, str]:
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


def _decide(tokens: float, allowed: bool, burst: int, rate_per_s: float) -> Decision:
    return Decision(
        allowed=allowed,
        limit=burst,
        remaining=max(0, math.floor(tokens)),
        reset_s=max(0, math.ceil((burst - tokens) / rate_per_s)),
        retry_after_s=0 if allowed else max(1, math.ceil((1 - tokens) / rate_per_s)),
    )


class MemoryRateLimiter:
    backend = "memory"

    def __init__(self, per_minute: int, burst: int, max_clients: int = 100_000):
        self.rate_per_s, self.burst = per_minute / 60.0, burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = (
            OrderedDict()
        )  # client -> (tokens, monotonic s)
        self._lock = threading.Lock()

    def hit(self, client: str) -> Decision:
        return self._step(client, take=True)

    def peek(self, client: str) -> Decision:
        return self._step(client, take=False)

    def _step(self, client: str, take: bool) -> Decision:
        now = time.monotonic()
        with self._lock:
            state = self._buckets.get(client)
            if state is None and not take:  # an unseen client has a full bucket; remember nothing
                return _decide(float(self.burst), True, self.burst, self.rate_per_s)
            tokens, last = state or (float(self.burst), now)
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            allowed = tokens >= 1.0
            if not take:
                return _decide(tokens, allowed, self.burst, self.rate_per_s)
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self.max_clients:  # forget the least recently seen clients
                self._buckets.popitem(last=False)
        return _decide(tokens, allowed, self.burst, self.rate_per_s)


# KEYS[1] bucket hash; ARGV: rate (tokens/s), burst, take (1: take a token; 0: only look). Returns {allowed 0|1, tokens as a string (Lua numbers
# become integers in replies)}.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local take = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then allowed = 1 end
if take == 0 then return {allowed, tostring(tokens)} end
if allowed == 1 then tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class RedisRateLimiter:
    """Shared limit. If Redis fails at request time the request is judged by a local in-memory bucket
    (logged), so an outage degrades to per-instance limits instead of refusing or admitting everyone."""

    backend = "redis"
    prefix = "captioner:ratelimit:"

    def __init__(self, client, per_minute: int, burst: int, what: str = "rate limiter"):
        self.client, self.rate_per_s, self.burst = client, per_minute / 60.0, burst
        self._script = client.register_script(_LUA)
        self._fallback = MemoryRateLimiter(per_minute, burst)
        self.guard = RedisGuard(what)

    def hit(self, client: str) -> Decision:
        return self._step(client, take=True)

    def peek(self, client: str) -> Decision:
        return self._step(client, take=False)

    def _step(self, client: str, take: bool) -> Decision:
        def shared() -> Decision:
            args = [self.rate_per_s, self.burst, int(take)]
            allowed, tokens = self._script(keys=[self.prefix + client], args=args)
            return _decide(float(tokens), bool(int(allowed)), self.burst, self.rate_per_s)

        return self.guard.call(shared, lambda: (self._fallback.hit if take else self._fallback.peek)(client))


class NoRateLimiter:
    backend = "none"

    def hit(self, client: str) -> Decision | None:
        return None

    def peek(self, client: str) -> Decision | None:
        return None


def make_rate_limiter(per_minute: int, burst: int, redis_client=None, what: str = "rate limiter"):
    """A limiter of ``per_minute`` tokens a minute in buckets of ``burst``; none when per_minute is 0."""
    if per_minute <= 0:
        return NoRateLimiter()
    if redis_client is not None:
        return RedisRateLimiter(redis_client, per_minute, burst, what)
    return MemoryRateLimiter(per_minute, burst)
