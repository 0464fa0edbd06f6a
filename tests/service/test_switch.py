"""Switching models without downtime: reload under load (no request fails), refusal of a broken or tampered
bundle (the old model keeps serving), rollback, versions in /health, admin authentication, SIGHUP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from service_helpers import free_port
from service_inputs import jpeg

from conftest_helpers import build_tiny_bundle

URL = "/generate-caption/"
ADMIN_KEY = "admin-secret"
ADMIN = {"X-Admin-Key": ADMIN_KEY}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory, tiny_encoder_onnx, tiny_vocabulary) -> Path:
    """A second tiny bundle: same shapes as tests/conftest.py's, other random weights (another version)."""
    return build_tiny_bundle(
        tmp_path_factory.mktemp("other") / "tiny2", tiny_encoder_onnx, tiny_vocabulary, seed=1
    )


def replace_folder(live: Path, source: Path) -> None:
    """What an operator does before a reload: put the new bundle where the settings point."""
    staging = live.with_name(live.name + ".new")
    shutil.copytree(source, staging)
    shutil.rmtree(live)
    staging.rename(live)


@pytest.fixture
def live(tmp_path, tiny_bundle) -> Path:
    folder = tmp_path / "live"
    shutil.copytree(tiny_bundle, folder)
    return folder


@pytest.fixture
def switchable(make_client, live):
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    return make_client(captioner=None, bundle_path=live, admin_keys_sha256=[digest], cache_max_entries=0)


def versions(client) -> tuple[str, str | None]:
    model = client.get("/health").json()["model"]
    return model["version"], model["previous_version"]


def test_a_reload_under_load_loses_no_request(switchable, live, other_bundle, tiny_bundle):
    client = switchable
    v1, _ = versions(client)
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def load(seed: int) -> None:
        image = jpeg(seed=seed)
        while not stop.is_set():
            r = client.post(URL, files={"file": image})
            seen.append((r.status_code, r.json().get("model_version", r.text)))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    replace_folder(live, other_bundle)
    r = client.post("/admin/model/reload", headers=ADMIN)
    assert r.status_code == 200, r.text
    v2 = r.json()["active"]
    assert v2 != v1 and r.json()["previous"] == v1
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert seen and all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    assert {v for _, v in seen} == {v1, v2}  # answers from both models, none failed
    assert versions(client) == (v2, v1)
    # Rollback is immediate: the previous model is still loaded.
    r = client.post("/admin/model/rollback", headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"active": v1, "previous": v2}
    assert client.post(URL, files={"file": jpeg()}).json()["model_version"] == v1


def test_a_tampered_or_broken_bundle_is_refused_and_the_old_model_keeps_serving(switchable, live):
    client = switchable
    before = versions(client)
    vocab = live / "tokenizer.json"
    vocab.write_text(vocab.read_text().replace("dog", "cat"))  # tampered: its checksum no longer matches
    r = client.post("/admin/model/reload", headers=ADMIN)
    assert r.status_code == 422 and r.json()["type"].endswith("model-refused"), r.text
    assert str(live) not in r.text  # no filesystem path in a response
    shutil.rmtree(live)  # gone altogether
    assert client.post("/admin/model/reload", headers=ADMIN).status_code == 422
    assert versions(client) == before
    assert client.post(URL, files={"file": jpeg()}).status_code == 200
    metrics = client.get("/metrics").text
    assert 'captioner_model_switches_total{outcome="refused"} 2.0' in metrics


def test_the_cache_never_answers_with_another_models_caption(make_client, live, other_bundle):
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    client = make_client(captioner=None, bundle_path=live, admin_keys_sha256=[digest])
    image = jpeg(seed=3)
    first = client.post(URL, files={"file": image})
    assert client.post(URL, files={"file": image}).headers["X-Cache"] == "HIT"
    replace_folder(live, other_bundle)
    assert client.post("/admin/model/reload", headers=ADMIN).status_code == 200
    after = client.post(URL, files={"file": image})
    assert (
        after.headers["X-Cache"] == "MISS" and after.json()["model_version"] != first.json()["model_version"]
    )


def test_admin_endpoints_need_an_admin_key(make_client, switchable):
    off = make_client()
    r = off.post("/admin/model/reload")
    assert r.status_code == 403 and "CAPTIONER_ADMIN_KEYS_SHA256" in r.json()["detail"]
    assert switchable.post("/admin/model/reload").status_code == 401
    assert switchable.post("/admin/model/reload", headers={"X-Admin-Key": "wrong"}).status_code == 401
    r = switchable.post("/admin/model/rollback", headers=ADMIN)
    assert r.status_code == 409 and r.json()["type"].endswith("no-previous-model")


@pytest.mark.slow
def test_sighup_reloads_the_configured_bundle(tmp_path, live, other_bundle):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    env.update(
        PORT=str(port), CAPTIONER_BUNDLE_PATH=str(live), CAPTIONER_RATE_LIMIT_PER_MINUTE="0",
        PYTHONPATH=str(REPO / "src"),
    )  # fmt: skip
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "captioner.service.app"], env=env, stdout=out, stderr=out
        )
    import httpx

    base = f"http://127.0.0.1:{port}"

    def model() -> dict:
        return httpx.get(base + "/health", timeout=5).json()["model"]

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        v1 = model()["version"]
        replace_folder(live, other_bundle)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while model()["version"] == v1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert model()["previous_version"] == v1 and model()["version"] != v1
        assert proc.poll() is None
        # A broken bundle on the next SIGHUP: refused, logged, still serving the same model.
        v2 = model()["version"]
        (live / "manifest.json").write_text(json.dumps({"format": "nonsense"}))
        proc.send_signal(signal.SIGHUP)
        time.sleep(3)
        assert model()["version"] == v2 and proc.poll() is None
        assert "SIGHUP model reload refused" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_cache_never_answers_with_an_old_label_map(make_client, live):
    """Same weights, a new labels.json: the captions may change, so the cached ones must not be served."""
    from captioner.model.bundle import TOKENIZER_FILE, load_bundle, record_labels
    from captioner.model.labels import LabelMap

    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    client = make_client(captioner=None, bundle_path=live, admin_keys_sha256=[digest])
    image = jpeg(seed=4)
    first = client.post(URL, files={"file": image})
    assert client.post(URL, files={"file": image}).headers["X-Cache"] == "HIT"
    vocabulary_sha = load_bundle(live).manifest["files"][TOKENIZER_FILE]
    labels = LabelMap({c: ("dog",) for c in range(1000)}, vocabulary_sha, {}, {}, {"built": "in a test"})
    record_labels(live, labels)
    assert client.post("/admin/model/reload", headers=ADMIN).status_code == 200
    after = client.post(URL, files={"file": image})
    assert after.headers["X-Cache"] == "MISS"
    assert after.json()["model_version"] == first.json()["model_version"]  # the weights did not change
