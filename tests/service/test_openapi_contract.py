"""The OpenAPI schema says exactly what the server enforces: bounds, files per batch, and API keys only when set.

The slow test runs ``schemathesis run --checks all`` against the real app on a loopback socket. What it is told
beyond the schema, and why, is in schemathesis.toml and schemathesis_hooks.py beside this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from unittest.mock import ANY

import pytest
from fastapi import FastAPI, Query, Request
from fastapi.testclient import TestClient
from service_helpers import serve_in_thread, service_settings

from captioner.decode.options import MAX_BEAM_SIZE, MAX_LENGTH_LIMIT, MAX_LENGTH_PENALTY, MAX_SCORE_DROP
from captioner.encoders.imagenet import MAX_TAGS_TOP_K
from captioner.service.app import create_app
from captioner.service.deps import CaptionQuery, caption_query, query_parameters
from captioner.service.security import hash_key

HERE = Path(__file__).resolve().parent
ADMIN_KEY = "contract-admin"
CAPTION_ROUTES = ("/generate-caption/", "/generate-captions/")


def _query_bounds(schema: dict, path: str) -> dict[str, tuple]:
    out = {}
    for p in schema["paths"][path]["post"]["parameters"]:
        s = next(s for s in p["schema"].get("anyOf", [p["schema"]]) if s.get("type") != "null")
        out[p["name"]] = (s.get("minimum"), s.get("maximum"))
    return out


def test_decode_option_bounds_are_decode_options_own(make_client):
    schema = make_client().get("/openapi.json").json()
    for path in CAPTION_ROUTES:
        assert _query_bounds(schema, path) == {
            "strategy": (None, None),
            "beam_size": (1, MAX_BEAM_SIZE),
            "max_length": (1, MAX_LENGTH_LIMIT),
            "length_penalty": (0, MAX_LENGTH_PENALTY),
            "n_best": (1, MAX_BEAM_SIZE),
            "label_constraint": (None, None),
            "label_constraint_min_prob": (None, 1),  # above 0: exclusiveMinimum
            "label_constraint_max_score_drop": (0, MAX_SCORE_DROP),
            "label_constraint_always_prob": (None, 1),
            "tags_top_k": (0, MAX_TAGS_TOP_K),
            "tags_min_prob": (0, 1),
            "gender_neutral": (None, None),
        }


def test_out_of_bounds_is_422_naming_the_parameter(client):
    from service_inputs import jpeg

    r = client.post("/generate-caption/?beam_size=0", files={"file": jpeg()})
    assert r.status_code == 422 and "beam_size" in r.json()["detail"]


def test_caption_query_reads_and_documents_like_fastapis_own_query_model():
    """deps.CaptionQuery is validated by the service itself (one pydantic call; see its docstring). Drift guard:
    FastAPI's ``Annotated[CaptionQuery, Query()]`` documents the same parameters and answers the same values,
    errors (422, with the same locations) and defaults."""
    app = FastAPI()

    @app.get("/fastapi")
    def by_fastapi(q: Annotated[CaptionQuery, Query()]) -> dict:
        return q.model_dump()

    @app.get("/ours", openapi_extra={"parameters": query_parameters()})
    def by_us(request: Request) -> dict:
        return caption_query(request).model_dump()

    paths = app.openapi()["paths"]
    assert paths["/ours"]["get"]["parameters"] == paths["/fastapi"]["get"]["parameters"]
    client = TestClient(app)
    queries = [
        "", "beam_size=5&strategy=greedy&gender_neutral=yes&tags_top_k=0", "beam_size=2&beam_size=4",
        "unknown=1&n_best=2", "beam_size=0", "max_length=x&length_penalty=-1", "strategy=sample",
        "label_constraint_min_prob=0&label_constraint=maybe", "beam_size=&strategy=&gender_neutral=",
    ]  # fmt: skip
    for query in queries:
        theirs, ours = client.get(f"/fastapi?{query}"), client.get(f"/ours?{query}")
        assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json()), query
    assert client.get("/ours?beam_size=0").status_code == 422


def test_batch_schema_states_the_most_files(make_client):
    schema = make_client(max_batch_images=3).get("/openapi.json").json()
    body = schema["paths"]["/generate-captions/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["files"]["maxItems"] == 3


def test_api_key_scheme_only_when_the_server_has_keys(make_client):
    open_schema = make_client().get("/openapi.json").json()
    assert "securitySchemes" not in open_schema.get("components", {})
    assert all("security" not in op for ops in open_schema["paths"].values() for op in ops.values())

    keyed = make_client(api_keys_sha256=[hash_key("s3cret")])
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": ANY}
    }
    for path in CAPTION_ROUTES:
        assert schema["paths"][path]["post"]["security"] == [{"ApiKey": []}]
    assert "security" not in schema["paths"]["/admin/model/reload"]["post"]  # no admin keys configured

    admin = make_client(admin_keys_sha256=[hash_key("root")]).get("/openapi.json").json()
    assert set(admin["components"]["securitySchemes"]) == {"AdminKey"}
    assert admin["paths"]["/admin/model/reload"]["post"]["security"] == [{"AdminKey": []}]


@pytest.fixture
def live_url(tiny_bundle, service_captioner):
    # Rate limit off; an admin key, so that the model-switch endpoints are exercised too (they reload the bundle).
    settings = service_settings(tiny_bundle, admin_keys_sha256=[hash_key(ADMIN_KEY)])
    with serve_in_thread(create_app(settings, captioner=service_captioner)) as url:
        yield url


@pytest.mark.slow
def test_schemathesis_finds_no_contract_failure(live_url, tmp_path):
    pytest.importorskip("schemathesis")
    cli = Path(sys.executable).with_name("schemathesis")
    env = dict(os.environ, SCHEMATHESIS_HOOKS="schemathesis_hooks", PYTHONPATH=str(HERE), NO_COLOR="1")
    cmd = [
        str(cli), "--config-file", str(HERE / "schemathesis.toml"), "run", f"{live_url}/openapi.json",
        "--checks", "all", "--max-examples", "25", "--seed", "1", "--generation-database", "none",
        "--workers", "1", "--no-color", "-H", f"X-Admin-Key: {ADMIN_KEY}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "No issues found" in proc.stdout


def test_every_caption_query_parameter_is_a_decode_or_an_answer_option():
    from dataclasses import fields

    from captioner.decode.answer import AnswerOptions
    from captioner.decode.options import DecodeOptions

    decode, answer = {f.name for f in fields(DecodeOptions)}, {f.name for f in fields(AnswerOptions)}
    assert set(CaptionQuery.model_fields) <= decode | answer and not decode & answer
