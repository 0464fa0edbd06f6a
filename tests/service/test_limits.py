"""Rate limits, API keys (and their rotation), CORS, overload, timeouts, readiness and settings validation."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
from pydantic import ValidationError
from service_helpers import assert_problem
from service_inputs import jpeg

from captioner.service.settings import Settings

URL = "/generate-caption/"


class SlowCaptioner:
    """Wraps the real captioner; caption_images waits for ``gate`` (an Event) or sleeps ``delay_s``."""

    def __init__(self, inner, delay_s: float = 0.0, gate: threading.Event | None = None):
        self.inner, self.delay_s, self.gate = inner, delay_s, gate
        self.version, self.model_info = inner.version, inner.model_info

    def load(self, *args, **kwargs):
        return self.inner.load(*args, **kwargs)

    def caption_images(self, images, options=None):
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.delay_s)
        return self.inner.caption_images(images, options) if options else self.inner.caption_images(images)


# -- rate limiting --


def test_rate_limit_in_memory_gives_429_with_headers(make_client):
    client = make_client(rate_limit_per_minute=3)
    seen = []
    for i in range(3):
        r = client.post(URL, files={"file": jpeg(seed=i)})
        assert r.status_code == 200
        seen.append(int(r.headers["X-RateLimit-Remaining"]))
        assert r.headers["X-RateLimit-Limit"] == "3"
    assert seen == [2, 1, 0]
    r = client.post(URL, files={"file": jpeg()})
    body = assert_problem(r, 429, "rate-limited")
    assert "per minute" in body["detail"]
    assert 1 <= int(r.headers["Retry-After"]) <= 20
    assert r.headers["X-RateLimit-Remaining"] == "0" and int(r.headers["X-RateLimit-Reset"]) > 0
    assert client.get("/health").status_code == 200  # probes are never rate limited
    assert "captioner_rate_limited_total 1.0" in client.get("/metrics").text


def test_rate_limit_is_per_api_key(make_client):
    keys = ["key-one", "key-two"]
    client = make_client(
        rate_limit_per_minute=1, api_keys_sha256=[hashlib.sha256(k.encode()).hexdigest() for k in keys]
    )
    assert client.post(URL, files={"file": jpeg()}, headers={"X-API-Key": "key-one"}).status_code == 200
    assert client.post(URL, files={"file": jpeg()}, headers={"X-API-Key": "key-one"}).status_code == 429
    assert client.post(URL, files={"file": jpeg()}, headers={"X-API-Key": "key-two"}).status_code == 200


def test_token_bucket_refills():
    from captioner.service.ratelimit import MemoryRateLimiter

    limiter = MemoryRateLimiter(per_minute=600, burst=2)  # 10 tokens/s
    assert [limiter.hit("c").allowed for _ in range(3)] == [True, True, False]
    time.sleep(0.15)
    assert limiter.hit("c").allowed and not limiter.hit("c").allowed
    assert limiter.hit("other").allowed


# -- API keys --


def test_api_keys(make_client, caplog):
    client = make_client(api_keys_sha256=[hashlib.sha256(b"s3cret").hexdigest()])
    body = assert_problem(client.post(URL, files={"file": jpeg()}), 401, "unauthorized")
    assert "X-API-Key" in body["detail"]
    r = client.post(URL, files={"file": jpeg()}, headers={"X-API-Key": "wrong", "X-Request-ID": "req-42"})
    assert_problem(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("ApiKey")
    assert client.post(URL, files={"file": jpeg()}, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    refused = [rec for rec in caplog.records if "refused request" in rec.getMessage()]
    assert len(refused) == 2
    assert all("s3cret" not in rec.getMessage() and "wrong" not in rec.getMessage() for rec in refused)


def test_api_keys_file_rotates_without_restart(make_client, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# ops team\n{hashlib.sha256(b'old-key').hexdigest()}\n")
    client = make_client(api_keys_file=keys)

    def status(key):
        return client.post(URL, files={"file": jpeg()}, headers={"X-API-Key": key}).status_code

    assert status("old-key") == 200 and status("new-key") == 401
    keys.write_text(f"{hashlib.sha256(b'new-key').hexdigest()}  # rotated\nnot-a-digest\n")
    os.utime(keys, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new mtime even on coarse clocks
    assert status("new-key") == 200 and status("old-key") == 401
    keys.unlink()
    assert status("new-key") == 401  # a missing file accepts nothing (fail closed)


# -- CORS --


def test_cors_preflight_allowed_and_denied(make_client):
    client = make_client(cors_allow_origins=["https://app.example.com"])
    ok = client.options(
        URL,
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key",
        },
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    denied = client.options(
        URL, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers
    simple = client.post(URL, files={"file": jpeg()}, headers={"Origin": "https://app.example.com"})
    assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "X-Cache" in simple.headers["access-control-expose-headers"]


def test_no_cors_by_default(client):
    r = client.options(
        URL, headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers


# -- overload, timeouts, readiness --


def test_full_queue_is_503_at_once(make_client, service_captioner):
    gate = threading.Event()
    # microbatch_max_size=1: this test gates the pool itself (batching is tested in test_batching.py).
    client = make_client(captioner=SlowCaptioner(service_captioner), max_queue=1, microbatch_max_size=1)
    client.app.state.service.captioner = SlowCaptioner(service_captioner, gate=gate)  # after the warm-up
    first: list = []
    worker = threading.Thread(target=lambda: first.append(client.post(URL, files={"file": jpeg(seed=1)})))
    worker.start()
    for _ in range(200):
        if client.app.state.service.pool.inflight:
            break
        time.sleep(0.01)
    start = time.perf_counter()
    r = client.post(URL, files={"file": jpeg(seed=2)})
    assert time.perf_counter() - start < 2
    assert_problem(r, 503, "overloaded")
    assert r.headers["Retry-After"] == "1"
    gate.set()
    worker.join(30)
    assert first[0].status_code == 200
    assert client.post(URL, files={"file": jpeg(seed=2)}).status_code == 200


def test_identical_concurrent_requests_compute_once(make_client, service_captioner):
    gate = threading.Event()
    calls = []
    slow = SlowCaptioner(service_captioner, gate=gate)
    original = slow.caption_images
    slow.caption_images = lambda images, options=None: calls.append(1) or original(images, options)
    client = make_client(microbatch_max_size=1)
    client.app.state.service.captioner = slow
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(client.post(URL, files={"file": jpeg(seed=9)})))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)
    gate.set()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200] * 4
    assert len(calls) == 1
    assert sorted(r.headers["X-Cache"] for r in results) == ["HIT", "HIT", "HIT", "MISS"]
    assert len({r.json()["caption"] for r in results}) == 1


def test_slow_inference_times_out_with_504(make_client, service_captioner):
    client = make_client(
        request_timeout_s=0.2, decode_timeout_s=0.1, microbatch_max_size=1
    )  # SlowCaptioner wraps caption_images
    client.app.state.service.captioner = SlowCaptioner(service_captioner, delay_s=1.0)
    assert_problem(client.post(URL, files={"file": jpeg()}), 504, "timeout")
    assert client.get("/health").status_code == 200


def test_readiness_waits_for_warmup(make_client, service_captioner):
    gate = threading.Event()
    client = make_client(captioner=SlowCaptioner(service_captioner, gate=gate), load_in_background=True)
    assert client.get("/livez").status_code == 200
    assert_problem(client.get("/readyz"), 503, "not-ready")
    assert client.get("/health").json()["status"] == "loading"
    assert_problem(client.post(URL, files={"file": jpeg()}), 503, "not-ready")
    gate.set()
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.02)
    assert client.get("/readyz").status_code == 200 and client.get("/health").json()["status"] == "ok"


def test_model_that_fails_to_load_is_reported(make_client, tmp_path):
    client = make_client(captioner=None, bundle_path=tmp_path / "missing", load_in_background=True)
    for _ in range(200):
        if client.get("/health").json()["status"] != "loading":
            break
        time.sleep(0.02)
    health = client.get("/health").json()
    assert health["status"] == "error" and "model bundle not found" in health["load_error"]
    assert "model bundle not found" in assert_problem(client.get("/readyz"), 503)["detail"]


def test_bad_model_path_stops_startup(tiny_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from captioner.errors import BundleError
    from captioner.service.app import create_app

    app = create_app(Settings(_env_file=None, bundle_path=tmp_path / "missing"))
    with pytest.raises(BundleError, match="model bundle not found"), TestClient(app):
        pass


# -- settings --


def test_defaults_and_env(monkeypatch):
    for var in ("MODEL_PATH", "TOKENIZER_PATH", "WEIGHTS_PATH", "HOST", "PORT"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(_env_file=None)
    assert (s.host, s.port, s.max_upload_bytes, s.max_batch_images, s.max_queue) == (
        "127.0.0.1",
        8000,
        10 * 2**20,
        8,
        32,
    )
    assert s.cors_allow_origins == [] and not s.auth_enabled and not s.original and s.bundle_path is None
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("CAPTIONER_CORS_ALLOW_ORIGINS", "https://a.example, https://b.example:8443")
    monkeypatch.setenv("CAPTIONER_API_KEYS_SHA256", hashlib.sha256(b"k").hexdigest().upper())
    s = Settings(_env_file=None)
    assert s.port == 9001 and s.cors_allow_origins == ["https://a.example", "https://b.example:8443"]
    assert s.api_keys_sha256 == [hashlib.sha256(b"k").hexdigest()] and s.auth_enabled


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (
            {"cors_allow_origins": ["*"], "cors_allow_credentials": True},
            "list the allowed origins explicitly",
        ),
        ({"cors_allow_origins": ["https://a.example/"]}, "without a path or trailing slash"),
        ({"api_keys_sha256": ["plain-text-key"]}, "sha256sum"),
        ({"model_path": "m.keras"}, "TOKENIZER_PATH"),
        ({"model_path": "m.keras", "tokenizer_path": "t.pkl"}, "CAPTIONER_ENCODER_PATH"),
        ({"weights_path": "w.h5"}, "MODEL_PATH"),
        ({"default_beam_size": 20}, "beam_size must be"),
        ({"max_upload_bytes": 0}, "greater than or equal"),
        ({"redis_url": "localhost:6379"}, "redis://"),
        ({"port": 70000}, "less than or equal"),
        ({"bundle_sha256": "abc123"}, "captioner info"),
        (
            {
                "model_path": "m.keras",
                "tokenizer_path": "t.pkl",
                "encoder_path": "e.onnx",
                "bundle_sha256": "0" * 64,
            },
            "not both",
        ),
        ({"auth_failures_burst": 0}, "greater than or equal"),
        ({"decode_timeout_s": 30, "request_timeout_s": 30}, "must be less than CAPTIONER_REQUEST_TIMEOUT_S"),
        ({"decode_memory_budget_bytes": 2**20}, "greater than or equal"),
    ],
)
def test_unsafe_or_inconsistent_settings_are_refused(values, match):
    with pytest.raises(ValidationError, match=match):
        Settings(_env_file=None, **values)


def test_original_env_vars_select_the_original_format(monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "caption_model.keras"))
    monkeypatch.setenv("TOKENIZER_PATH", str(tmp_path / "tokenizer.pkl"))
    monkeypatch.setenv("CAPTIONER_ENCODER_PATH", str(tmp_path / "enc.onnx"))
    s = Settings(_env_file=None)
    assert s.original and s.tokenizer_path == tmp_path / "tokenizer.pkl"


# -- per-caller state when API keys are on --


def _digests(*keys: str) -> list[str]:
    return [hashlib.sha256(k.encode()).hexdigest() for k in keys]


def test_cache_is_per_api_key(make_client):
    """Key B must not learn (X-Cache: HIT, a fast answer) that key A sent an image."""
    client = make_client(api_keys_sha256=_digests("key-a", "key-b"))

    def post(key, url=URL, field="file"):
        return client.post(url, files={field: jpeg(seed=5)}, headers={"X-API-Key": key})

    a, b, a_again = post("key-a"), post("key-b"), post("key-a")
    assert [r.headers["X-Cache"] for r in (a, b, a_again)] == ["MISS", "MISS", "HIT"]
    assert b.json()["caption"] == a.json()["caption"]
    assert post("key-b", "/generate-captions/", "files").json()["results"][0]["result"]["cached"] is True


def test_without_api_keys_the_cache_is_shared_as_before(make_client):
    from captioner.decode.options import DecodeOptions
    from captioner.service.cache import cache_key

    client = make_client()
    assert client.post(URL, files={"file": jpeg(seed=5)}).headers["X-Cache"] == "MISS"
    assert client.post(URL, files={"file": jpeg(seed=5)}).headers["X-Cache"] == "HIT"
    options = DecodeOptions()
    # The same keys as before namespacing, so a shared Redis cache stays warm across the upgrade.
    assert cache_key(b"x", options, "v") == cache_key(b"x", options, "v", "")
    assert cache_key(b"x", options, "v", "key:a") != cache_key(b"x", options, "v", "key:b")


def test_single_flight_is_per_api_key(make_client, service_captioner):
    gate = threading.Event()
    calls = []
    slow = SlowCaptioner(service_captioner, gate=gate)
    original = slow.caption_images
    slow.caption_images = lambda images, options=None: calls.append(1) or original(images, options)
    client = make_client(microbatch_max_size=1, api_keys_sha256=_digests("key-a", "key-b"))
    client.app.state.service.captioner = slow
    results: dict[str, list] = {"key-a": [], "key-b": []}

    def post(key):
        results[key].append(client.post(URL, files={"file": jpeg(seed=9)}, headers={"X-API-Key": key}))

    threads = [threading.Thread(target=post, args=(key,)) for key in ("key-a", "key-b") * 2]
    for t in threads:
        t.start()
    time.sleep(0.5)
    gate.set()
    for t in threads:
        t.join(30)
    assert len(calls) == 2  # one computation per key, never one shared across keys
    for responses in results.values():
        assert sorted(r.headers["X-Cache"] for r in responses) == ["HIT", "MISS"]


# -- failed API-key attempts are budgeted per client IP --


def test_failed_api_keys_are_throttled_per_client(make_client, caplog):
    from fastapi.testclient import TestClient

    client = make_client(
        api_keys_sha256=_digests("s3cret"), auth_failures_per_minute=1, auth_failures_burst=3
    )
    statuses, last = [], None
    for i in range(8):
        last = client.post(URL, files={"file": jpeg()}, headers={"X-API-Key": f"guess-{i}"})
        statuses.append(last.status_code)
    assert statuses == [401] * 3 + [429] * 5
    body = assert_problem(last, 429, "too-many-auth-failures")
    assert "X-API-Key" in body["detail"] and 1 <= int(last.headers["Retry-After"]) <= 60
    # Spent: even the right key from this address waits (the key is not checked at all) ...
    assert client.post(URL, files={"file": jpeg()}, headers={"X-API-Key": "s3cret"}).status_code == 429
    # ... while other clients are not affected, and probes stay open.
    other = TestClient(client.app, client=("203.0.113.7", 40000), raise_server_exceptions=False)
    assert other.post(URL, files={"file": jpeg()}, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert other.post(URL, files={"file": jpeg()}, headers={"X-API-Key": "nope"}).status_code == 401
    assert client.get("/health").status_code == 200
    metrics = client.get("/metrics").text
    assert "captioner_auth_failures_total 4.0" in metrics
    assert "captioner_auth_throttled_total 6.0" in metrics
    throttled = [rec for rec in caplog.records if "throttling key attempts" in rec.getMessage()]
    assert len(throttled) == 1  # once per client per minute, not once per refused request


def test_auth_failure_budget_can_be_turned_off(make_client):
    client = make_client(api_keys_sha256=_digests("s3cret"), auth_failures_per_minute=0)
    statuses = {client.post(URL, files={"file": jpeg()}).status_code for _ in range(12)}
    assert statuses == {401}


def test_peek_does_not_spend_tokens():
    from captioner.service.ratelimit import MemoryRateLimiter

    limiter = MemoryRateLimiter(per_minute=1, burst=2)
    assert all(limiter.peek("c").allowed for _ in range(5))
    assert [limiter.hit("c").allowed for _ in range(3)] == [True, True, False]
    assert not limiter.peek("c").allowed and limiter.peek("c").retry_after_s >= 1


def test_the_key_and_the_rate_limit_are_checked_before_the_query_and_the_upload(make_client):
    """A caption request is admitted (key, then a rate-limit token) before its query is validated or a byte of
    its upload is read: a wrong key or a spent budget is what the client hears, whatever else is wrong."""
    keyed = make_client(api_keys_sha256=_digests("s3cret"))
    bad = {"files": {"file": ("x.txt", b"not an image")}}
    assert_problem(
        keyed.post(URL + "?beam_size=0", headers={"X-API-Key": "nope"}, **bad), 401, "unauthorized"
    )
    assert keyed.post(URL + "?beam_size=0", headers={"X-API-Key": "s3cret"}, **bad).status_code == 422

    limited = make_client(rate_limit_per_minute=1, rate_limit_burst=1)
    assert limited.post(URL + "?beam_size=0", **bad).status_code == 422  # spends the one token
    assert_problem(limited.post(URL + "?beam_size=0", **bad), 429, "rate-limited")
