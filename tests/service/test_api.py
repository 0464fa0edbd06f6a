"""The endpoints' happy paths: caption, candidates, cache, options, batch, health, probes, metrics, docs, page."""

from __future__ import annotations

import re

import pytest
from service_helpers import assert_problem
from service_inputs import jpeg, png


def test_caption_one_image(client):
    r = client.post("/generate-caption/", files={"file": ("photo.jpg", jpeg(), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["caption"], str)
    assert body["candidates"][0]["caption"] == body["caption"] or body["caption"]
    assert set(body["timings_ms"]) == {"encoder", "decoder", "total"}
    assert body["model_version"] == client.app.state.service.captioner.version
    assert body["cached"] is False and r.headers["X-Cache"] == "MISS"
    assert r.headers["X-Request-ID"] and float(r.headers["X-Process-Time-ms"]) >= 0


def test_the_original_curl_and_requests_calls_work(client):
    """requests.post(url, files={"file": open("example.jpg", "rb")}): a file tuple without a content type."""
    r = client.post("/generate-caption/", files={"file": jpeg()})
    assert r.status_code == 200 and "caption" in r.json()


def test_second_identical_request_is_a_cache_hit_with_the_same_result(client):
    files = {"file": ("a.jpg", jpeg(seed=3), "image/jpeg")}
    first = client.post("/generate-caption/", files=files)
    second = client.post("/generate-caption/", files=files)
    assert first.headers["X-Cache"] == "MISS" and second.headers["X-Cache"] == "HIT"
    assert second.json()["cached"] is True
    assert second.json()["caption"] == first.json()["caption"]
    assert second.json()["candidates"] == first.json()["candidates"]
    other_options = client.post("/generate-caption/?strategy=greedy", files=files)
    assert other_options.headers["X-Cache"] == "MISS"
    metrics = client.get("/metrics").text
    assert 'captioner_cache_lookups_total{result="hit"} 1.0' in metrics


def test_cache_can_be_disabled(make_client):
    client = make_client(cache_max_entries=0)
    files = {"file": ("a.jpg", jpeg(seed=4), "image/jpeg")}
    assert client.post("/generate-caption/", files=files).headers["X-Cache"] == "MISS"
    assert client.post("/generate-caption/", files=files).headers["X-Cache"] == "MISS"


def test_options_n_best_returns_that_many_candidates(client):
    r = client.post(
        "/generate-caption/?strategy=beam&beam_size=4&n_best=3&max_length=5", files={"file": png()}
    )
    assert r.status_code == 200, r.text
    cands = r.json()["candidates"]
    assert 1 <= len(cands) <= 3
    assert all(len(c["caption"].split()) <= 5 for c in cands)
    assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)


@pytest.mark.parametrize(
    ("query", "slug"),
    [
        # Bounds the OpenAPI schema states: FastAPI refuses them before any work (validation-error).
        ("beam_size=0", "validation-error"),
        ("beam_size=11", "validation-error"),
        ("max_length=65", "validation-error"),
        ("length_penalty=9", "validation-error"),
        ("length_penalty=nan", "validation-error"),
        ("strategy=sampling", "validation-error"),
        ("beam_size=three", "validation-error"),
        ("label_constraint_min_prob=0", "validation-error"),
        ("label_constraint_max_score_drop=11", "validation-error"),
        ("label_constraint=maybe", "validation-error"),
        # n_best <= beam size spans two parameters, which a schema cannot state: DecodeOptions refuses it.
        ("n_best=5&beam_size=3", "invalid-options"),
        ("strategy=greedy&n_best=2", "invalid-options"),
    ],
)
def test_bad_options_are_422_with_a_fix(client, query, slug):
    body = assert_problem(client.post(f"/generate-caption/?{query}", files={"file": jpeg()}), 422, slug)
    assert any(word in body["detail"] for word in ("must", "Input should", "valid"))


def test_batch_keeps_order_and_reports_bad_items_alone(client):
    files = [
        ("files", ("a.jpg", jpeg(seed=1), "image/jpeg")),
        ("files", ("b.txt", b"not an image", "text/plain")),
        ("files", ("c.png", png(seed=2), "image/png")),
    ]
    r = client.post("/generate-captions/?strategy=greedy", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [item["index"] for item in results] == [0, 1, 2]
    assert results[0]["result"]["caption"] is not None and results[0]["error"] is None
    assert results[1]["error"]["status"] == 415 and "file 2" in results[1]["error"]["detail"]
    assert results[2]["result"] is not None
    single = client.post("/generate-caption/?strategy=greedy", files={"file": jpeg(seed=1)})
    assert single.headers["X-Cache"] == "HIT"  # the batch filled the cache
    assert single.json()["caption"] == results[0]["result"]["caption"]


def test_batch_limit(make_client):
    client = make_client(max_batch_images=2)
    files = [("files", (f"{i}.jpg", jpeg(seed=i), "image/jpeg")) for i in range(3)]
    assert_problem(client.post("/generate-captions/", files=files), 413, "too-many-files")
    ok = client.post("/generate-captions/", files=files[:2])
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2


def test_batch_without_files_is_422(client):
    assert_problem(client.post("/generate-captions/", data={"x": "1"}), 422, "missing-file")


def test_health_reports_model_metrics_and_process(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["liveness"] is True and body["readiness"] is True
    assert body["model"]["format"] == "bundle" and body["model"]["metrics"] == {"BLEU-4": 0.0}
    assert body["model"]["version"]
    assert body["uptime_s"] >= 0
    assert body["process"]["rss_bytes"] > 10_000_000 and body["process"]["cpu_percent"] >= 0


def test_probes(client):
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_metrics_are_prometheus_text(client):
    client.post("/generate-caption/", files={"file": jpeg()})
    client.post("/generate-caption/", files={"file": b"nope"})
    text = client.get("/metrics").text
    assert 'captioner_http_requests_total{method="POST",route="/generate-caption/",status="200"} 1.0' in text
    assert 'status="415"' in text
    assert "captioner_http_request_duration_seconds_bucket" in text
    assert 'captioner_rejected_uploads_total{reason="unsupported-image-type"} 1.0' in text


def test_docs_redoc_openapi_and_page(client):
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/generate-caption/" in schema["paths"] and "/generate-captions/" in schema["paths"]
    body = schema["paths"]["/generate-caption/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["required"] == ["file"]
    page = client.get("/")
    assert page.status_code == 200 and '<input id="file"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # no CDN in the head
    assert client.get("/web/app.js").status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_every_asset_from_the_app_itself(client, page):
    """Swagger UI and ReDoc work offline: every script, stylesheet and icon comes from this app, none from a CDN."""
    html = client.get(page).text
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE), html
    assets = re.findall(r"""<(?:script|link)\b[^>]*?(?:src|href)=["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets) and (
        page == "/redoc" or any(a.endswith(".css") for a in assets)
    )
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 0, url
    assert "/openapi.json" in html and client.get("/openapi.json").status_code == 200


def test_unknown_route_and_method_are_problems(client):
    assert_problem(client.get("/nope"), 404, "not-found")
    assert_problem(client.get("/generate-caption/"), 405, "method-not-allowed")


def test_request_id_is_echoed_when_safe(client):
    assert client.get("/livez", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    bad = client.get("/livez", headers={"X-Request-ID": "evil\tvalue" * 30}).headers["X-Request-ID"]
    assert bad != "evil\tvalue" * 30 and len(bad) == 32


def test_no_public_response_shows_a_filesystem_path(make_client, tiny_bundle):
    """/health, the probes, metrics and error bodies never show where the bundle lives (not even when it fails
    to load with a message that names it): the server's log has the details."""
    from captioner.model.bundle import MANIFEST_FILE, sha256_file

    def shown(client) -> list[str]:
        requests = [
            ("GET", "/health", None),
            ("GET", "/readyz", None),
            ("GET", "/metrics", None),
            ("GET", "/openapi.json", None),
            ("GET", "/no/such/route", None),
            ("POST", "/generate-caption/", {"file": b"GIF89a\0\0\0\0"}),
            ("POST", "/generate-captions/", {"files": b"\xff\xd8\xff\xe0 not a jpeg"}),
        ]
        return [client.request(method, url, files=files).text for method, url, files in requests]

    def assert_no_path(texts: list[str]) -> None:
        for text in texts:
            assert str(tiny_bundle.parent) not in text and tiny_bundle.parent.name not in text, text

    ok = make_client(captioner=None)  # loads the tiny bundle from its folder, as production does
    assert_no_path(shown(ok))
    digest = sha256_file(tiny_bundle / MANIFEST_FILE)
    assert ok.get("/health").json()["model"]["sha256"] == digest  # what to pin (CAPTIONER_BUNDLE_SHA256)
    broken = make_client(captioner=None, bundle_sha256="0" * 64, load_in_background=True)
    for _ in range(500):
        if broken.get("/health").json()["status"] != "loading":
            break
    health = broken.get("/health").json()
    assert health["status"] == "error" and "not the pinned bundle" in health["load_error"]
    assert_no_path(shown(broken))
    assert make_client(captioner=None, bundle_sha256=digest).get("/readyz").status_code == 200
