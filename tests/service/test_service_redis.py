"""Shared state in a real redis-server: two app instances share one rate limit per client and one cache."""

from __future__ import annotations

import logging

from service_inputs import jpeg
from test_service_api import assert_problem

URL = "/generate-caption/"


def test_two_instances_share_the_rate_limit(make_client, redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    a = make_client(redis_url=redis_url, rate_limit_per_minute=3)
    b = make_client(redis_url=redis_url, rate_limit_per_minute=3)
    assert a.get("/health").json()["rate_limit"]["backend"] == "redis"
    statuses = [c.post(URL, files={"file": jpeg(seed=i)}).status_code for i, c in enumerate([a, b, a])]
    assert statuses == [200, 200, 200]
    r = b.post(URL, files={"file": jpeg()})
    assert_problem(r, 429, "rate-limited")
    assert r.headers["X-RateLimit-Limit"] == "3" and int(r.headers["Retry-After"]) >= 1
    assert a.post(URL, files={"file": jpeg()}).status_code == 429


def test_two_instances_share_the_cache(make_client, redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    a = make_client(redis_url=redis_url)
    b = make_client(redis_url=redis_url)
    assert a.get("/health").json()["cache"]["backend"] == "redis"
    first = a.post(URL, files={"file": jpeg(seed=7)})
    second = b.post(URL, files={"file": jpeg(seed=7)})
    assert first.headers["X-Cache"] == "MISS" and second.headers["X-Cache"] == "HIT"
    assert second.json()["candidates"] == first.json()["candidates"]


def test_unreachable_redis_falls_back_to_memory_with_a_warning(make_client, caplog):
    from conftest import free_port

    with caplog.at_level(logging.WARNING, logger="captioner.service"):
        client = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_per_minute=1)
    assert any("cannot reach Redis" in rec.getMessage() for rec in caplog.records)
    health = client.get("/health").json()
    assert health["cache"]["backend"] == "memory" and health["rate_limit"]["backend"] == "memory"
    assert client.post(URL, files={"file": jpeg()}).status_code == 200
    assert client.post(URL, files={"file": jpeg()}).status_code == 429


def test_redis_outage_at_request_time_degrades_to_local_limits(make_client, redis_url):
    client = make_client(redis_url=redis_url, rate_limit_per_minute=100)
    state = client.app.state.service

    class Broken:
        def __getattr__(self, name):
            raise ConnectionError("redis went away")

    state.cache.client = Broken()
    state.limiter._script = lambda **kw: (_ for _ in ()).throw(ConnectionError("redis went away"))
    r = client.post(URL, files={"file": jpeg(seed=11)})
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
