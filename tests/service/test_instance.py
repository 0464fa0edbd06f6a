"""CAPTIONER_INSTANCE_ID: every response names the replica that answered (for load balancers and tracing)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from service_inputs import jpeg

from captioner.service.settings import Settings


def test_instance_id_header_on_every_response(make_client):
    client = make_client(instance_id="pod-a.1")
    for r in (
        client.get("/livez"),
        client.post("/generate-caption/", files={"file": jpeg()}),
        client.get("/no-such-route"),
    ):
        assert r.headers["X-Instance-ID"] == "pod-a.1"


def test_no_instance_id_no_header(client):
    assert "X-Instance-ID" not in client.get("/livez").headers


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "new\nline"])
def test_instance_id_must_be_header_safe(bad):
    with pytest.raises(ValidationError, match="instance_id"):
        Settings(_env_file=None, instance_id=bad)
