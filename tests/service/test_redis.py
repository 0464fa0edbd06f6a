"""Shared state in a real redis-server: two app instances share one rate limit per client and one cache."""

from __future__ import annotations

import logging

from service_helpers import assert_problem
from service_inputs import jpeg

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
    from service_helpers import free_port

    with caplog.at_level(logging.WARNING, logger="captioner.service"):
        client = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_per_minute=1)
    assert any("cannot reach Redis" in rec.getMessage() for rec in caplog.records)
    assert client.post(URL, files={"file": jpeg()}).status_code == 200
    second = client.post(URL, files={"file": jpeg()})
    assert second.status_code == 429  # this instance's own limit still holds
    assert second.headers.get("X-Cache") is None
    health = client.get("/health").json()
    assert health["cache"]["degraded"] and health["rate_limit"]["degraded"]
    warnings = [
        rec.getMessage() for rec in caplog.records if "using this instance's memory" in rec.getMessage()
    ]
    assert len(warnings) <= 2  # one per component per outage, not one per request


def test_local_cache_serves_hits_while_redis_is_down(make_client):
    from service_helpers import free_port

    client = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_per_minute=0)
    first = client.post(URL, files={"file": jpeg(seed=21)})
    again = client.post(URL, files={"file": jpeg(seed=21)})
    assert first.headers["X-Cache"] == "MISS" and again.headers["X-Cache"] == "HIT"
    assert again.json()["caption"] == first.json()["caption"]


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


def test_per_key_cache_and_auth_failure_budget_are_shared_through_redis(make_client, redis_url):
    import hashlib

    import redis

    redis.Redis.from_url(redis_url).flushdb()
    digests = [hashlib.sha256(k.encode()).hexdigest() for k in ("key-a", "key-b")]
    settings = {"redis_url": redis_url, "api_keys_sha256": digests, "auth_failures_per_minute": 1}
    settings["auth_failures_burst"] = 2
    a, b = make_client(**settings), make_client(**settings)

    def post(client, key):
        return client.post(URL, files={"file": jpeg(seed=11)}, headers={"X-API-Key": key})

    assert [post(c, k).headers["X-Cache"] for c, k in [(a, "key-a"), (b, "key-b"), (b, "key-a")]] == [
        "MISS",
        "MISS",
        "HIT",
    ]
    keys = [k.decode() for k in redis.Redis.from_url(redis_url).keys("*")]
    assert not any("key-a" in k or digests[0] in k for k in keys)  # neither the key nor its full digest
    # The budget of failed keys is one per client across instances: two failures, then 429 on either.
    assert [post(c, "wrong").status_code for c in (a, b, a)] == [401, 401, 429]
    assert_problem(post(b, "key-a"), 429, "too-many-auth-failures")
