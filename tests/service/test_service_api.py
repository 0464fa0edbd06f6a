"""The endpoints' happy paths: caption, candidates, cache, options, batch, health, probes, metrics, docs, page."""

from __future__ import annotations

import re

import pytest
from service_inputs import jpeg, png

PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(response, status: int, slug: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS and body["status"] == status and body["detail"]
    assert "Traceback" not in response.text
    if slug:
        assert body["type"] == f"urn:captioner:problem:{slug}", body
    return body


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
        ("beam_size=0", "invalid-options"),
        ("beam_size=11", "invalid-options"),
        ("max_length=65", "invalid-options"),
        ("length_penalty=9", "invalid-options"),
        ("n_best=5&beam_size=3", "invalid-options"),
        ("strategy=greedy&n_best=2", "invalid-options"),
        ("strategy=sampling", "validation-error"),
        ("beam_size=three", "validation-error"),
        ("length_penalty=nan", "invalid-options"),
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
