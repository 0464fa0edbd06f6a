"""Tags, caption confidence and gender-neutral wording over HTTP (tiny random-weight bundle, real app)."""

from __future__ import annotations

import pytest
from service_inputs import jpeg

from captioner.decode.neutral import neutralize
from captioner.encoders.imagenet import MAX_TAGS_TOP_K, class_names


def _post(client, query: str = "", data: bytes | None = None):
    return client.post("/generate-caption/" + query, files={"file": ("p.jpg", data or jpeg(seed=3))})


def test_tags_and_confidence_come_back_with_the_default_bounds(client):
    body = _post(client).json()
    assert 0.0 <= body["confidence"] <= 1.0
    assert all(0.0 <= c["confidence"] <= 1.0 for c in body["candidates"])
    tags = body["tags"]
    assert isinstance(tags, list) and len(tags) <= 5  # CAPTIONER_DEFAULT_TAGS_TOP_K
    for t in tags:
        assert set(t) == {"label", "probability", "class_id"}
        assert t["probability"] >= 0.05 and class_names()[t["class_id"]] == t["label"]


def test_tags_top_k_and_min_prob_shape_the_answer_from_one_cached_result(client):
    everything = _post(client, f"?tags_top_k={MAX_TAGS_TOP_K}&tags_min_prob=0").json()
    assert len(everything["tags"]) == MAX_TAGS_TOP_K
    probs = [t["probability"] for t in everything["tags"]]
    assert probs == sorted(probs, reverse=True)
    three = _post(client, "?tags_top_k=3&tags_min_prob=0")
    assert three.headers["X-Cache"] == "HIT"  # answer options never change the cached model output
    assert three.json()["tags"] == everything["tags"][:3]
    cut = probs[1]
    above = _post(client, f"?tags_top_k=20&tags_min_prob={cut}").json()["tags"]
    assert above == [t for t in everything["tags"] if t["probability"] >= cut]
    assert _post(client, "?tags_top_k=0").json()["tags"] == []


@pytest.mark.parametrize(
    "query",
    ["?tags_top_k=-1", "?tags_top_k=21", "?tags_top_k=two", "?tags_min_prob=1.5", "?tags_min_prob=-0.1"],
)
def test_out_of_range_answer_options_are_422_problems(client, query):
    r = _post(client, query)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("validation-error") and "tags_" in r.json()["detail"]


def test_gender_neutral_query_and_setting(client, make_client):
    data = jpeg(seed=5)
    plain = _post(client, "?n_best=3", data).json()
    neutral = _post(client, "?n_best=3&gender_neutral=true", data).json()
    assert neutral["caption"] == neutralize(plain["caption"])
    assert [c["caption"] for c in neutral["candidates"]] == list(
        dict.fromkeys(neutralize(c["caption"]) for c in plain["candidates"])
    )
    by_default = make_client(default_gender_neutral=True)
    assert _post(by_default, "?n_best=3", data).json()["caption"] == neutral["caption"]
    assert _post(by_default, "?n_best=3&gender_neutral=false", data).json()["caption"] == plain["caption"]


def test_batch_answers_carry_tags_and_confidence(client):
    files = [("files", ("a.jpg", jpeg(seed=1))), ("files", ("b.jpg", jpeg(seed=2)))]
    body = client.post(
        "/generate-captions/?tags_top_k=2&tags_min_prob=0&gender_neutral=true", files=files
    ).json()
    for item in body["results"]:
        assert len(item["result"]["tags"]) == 2 and 0 <= item["result"]["confidence"] <= 1
        assert item["result"]["caption"] == neutralize(item["result"]["caption"])


def test_openapi_documents_the_answer_options_and_fields(client):
    schema = client.get("/openapi.json").json()
    for path in ("/generate-caption/", "/generate-captions/"):
        params = {p["name"]: p["schema"] for p in schema["paths"][path]["post"]["parameters"]}
        top_k = next(s for s in params["tags_top_k"]["anyOf"] if s.get("type") == "integer")
        assert (top_k["minimum"], top_k["maximum"]) == (0, MAX_TAGS_TOP_K)
        min_prob = next(s for s in params["tags_min_prob"]["anyOf"] if s.get("type") == "number")
        assert (min_prob["minimum"], min_prob["maximum"]) == (0, 1)
        assert {"type": "boolean"} in params["gender_neutral"]["anyOf"]
    out = schema["components"]["schemas"]["CaptionOut"]["properties"]
    assert (out["confidence"]["minimum"], out["confidence"]["maximum"]) == (0, 1)
    tag = schema["components"]["schemas"]["TagOut"]["properties"]
    assert tag["probability"]["maximum"] == 1 and tag["class_id"]["maximum"] == 999


def test_settings_refuse_out_of_range_defaults(tiny_bundle):
    from pydantic import ValidationError
    from service_helpers import service_settings

    for bad in ({"default_tags_top_k": 21}, {"default_tags_min_prob": 2.0}):
        with pytest.raises(ValidationError):
            service_settings(tiny_bundle, **bad)
