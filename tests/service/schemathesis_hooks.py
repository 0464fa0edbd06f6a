"""Schemathesis hooks for the OpenAPI contract test (tests/service/test_openapi_contract.py), loaded by the
``schemathesis run`` process through SCHEMATHESIS_HOOKS. Each one covers a rule the schema cannot state; the
rest of the generation is left to schemathesis.
"""

from __future__ import annotations

import io
import json

import schemathesis
from PIL import Image
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.transport.serialization import Binary


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


@schemathesis.hook
def filter_failure(ctx, failure, case, response) -> bool:
    """Keep every failure but one documented rule: n_best <= the beam size (1 for greedy) spans two query
    parameters, which a schema cannot state; the server refuses a larger n_best with 422 invalid-options."""
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 422:
        return True
    try:
        problem = json.loads(response.content)
    except ValueError:
        return True
    return not (
        problem.get("type") == "urn:captioner:problem:invalid-options"
        and problem.get("detail", "").startswith("n_best must be")
    )


@schemathesis.hook
def map_body(ctx, body):
    """The schema says a file part is ``format: binary``; the server needs a decodable image (else 415, as
    documented) and no schema can state that: every generated file part is a real PNG."""
    if isinstance(body, dict):
        for name in ("file", "files"):
            value = body.get(name)
            if isinstance(value, Binary):
                body[name] = Binary(PNG)
            elif isinstance(value, list):
                body[name] = [Binary(PNG) if isinstance(v, Binary) else v for v in value]
    return body
