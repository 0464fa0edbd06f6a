"""Property-based: requests generated from the app's own OpenAPI schema (valid and invalid query values,
random or real image bodies, missing bodies) never get a 5xx, and every error is a problem+json."""

from __future__ import annotations

import pytest
from service_inputs import jpeg, png

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.slow

IMAGES = [jpeg(), png(), jpeg((40, 30), seed=3)]


def _value(schema: dict) -> st.SearchStrategy:
    """A value for a query parameter: usually of its declared type, sometimes anything."""
    options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    typed = []
    for s in options:
        if "enum" in s:
            typed.append(st.sampled_from(s["enum"]))
        elif s.get("type") == "integer":
            typed.append(st.integers(-5, 70))
        elif s.get("type") == "number":
            typed.append(st.floats(-1, 10) | st.just(float("nan")))
        else:
            typed.append(st.text(max_size=8))
    junk = st.sampled_from(["", "x", "1e309", "-0", "9" * 30, "nan", "inf", "\u00e9", "%00"])
    return st.one_of(*typed, junk)


def _operations(app) -> list[tuple[str, str, dict]]:
    ops = []
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            ops.append((path, method, op))
    return ops


@st.composite
def requests_for(draw, ops):
    path, method, op = draw(st.sampled_from(ops))
    params = {}
    for p in op.get("parameters", []):
        if p["in"] == "query" and draw(st.booleans()):
            params[p["name"]] = draw(_value(p["schema"]))
    kwargs: dict = {"params": params}
    body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if body:
        field = next(iter(body["schema"]["properties"]))
        payload = draw(st.one_of(st.sampled_from(IMAGES), st.binary(max_size=256)))
        choice = draw(st.sampled_from(["file", "two", "none", "other-field", "text"]))
        if choice == "file":
            kwargs["files"] = {field: ("x", payload, draw(st.sampled_from(["image/jpeg", "text/html", ""])))}
        elif choice == "two":
            kwargs["files"] = [(field, ("a", payload, "image/png")), (field, ("b", IMAGES[0], "image/jpeg"))]
        elif choice == "other-field":
            kwargs["files"] = {"other": ("x", payload, "image/jpeg")}
        elif choice == "text":
            kwargs["data"] = {field: draw(st.text(max_size=20))}
    return method, path, kwargs


@pytest.fixture(scope="module")
def app_client(tiny_bundle, service_captioner):
    from fastapi.testclient import TestClient
    from service_helpers import service_settings

    from captioner.service.app import create_app

    app = create_app(service_settings(tiny_bundle, max_upload_bytes=64 * 1024), captioner=service_captioner)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_no_5xx_from_schema_generated_requests(app_client):
    ops = _operations(app_client.app)
    assert {p for _, p, _ in [(m, p, o) for p, m, o in ops]} >= {
        "/generate-caption/",
        "/generate-captions/",
        "/health",
    }

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(requests_for(ops))
    def check(request):
        method, path, kwargs = request
        r = app_client.request(method.upper(), path, **kwargs)
        assert r.status_code < 500, (method, path, kwargs.get("params"), r.text)
        if r.status_code >= 400:
            body = r.json()
            assert r.headers["content-type"].startswith("application/problem+json")
            assert {"type", "title", "status", "detail"} <= body.keys() and body["status"] == r.status_code

    check()
