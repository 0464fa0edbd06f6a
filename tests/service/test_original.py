"""The original design: MODEL_PATH/TOKENIZER_PATH/WEIGHTS_PATH served through captioner.load (no TensorFlow), and
``cd scripts/evaluation && python app.py`` answering the original curl/requests calls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from service_helpers import free_port
from service_inputs import jpeg

from original_artefacts import CAPTIONS, write_original_artefacts

REPO = Path(__file__).resolve().parents[2]

# Run first in a child python: from then on tensorflow, keras and torch cannot be imported, as in the environment
# ``bash scripts/setup.sh serve`` makes (which has none of them installed).
BLOCK_TRAINING_LIBRARIES = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "torch"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: a serve-only environment)")
        return None
sys.meta_path.insert(0, _Absent())
"""


@pytest.fixture(scope="module")
def original_files(tmp_path_factory) -> dict[str, Path]:
    """caption_model.keras (the tutorial's merge architecture, tiny) + weights + tokenizer.pkl + encoder."""
    pytest.importorskip("keras")
    a = write_original_artefacts(tmp_path_factory.mktemp("original"))
    return {
        "MODEL_PATH": a["model_path"],
        "WEIGHTS_PATH": a["weights_path"],
        "TOKENIZER_PATH": a["tokenizer_path"],
        "CAPTIONER_ENCODER_PATH": a["encoder_path"],
    }


WORDS = {w for c in CAPTIONS for w in c.split()} - {"startseq", "endseq"}


def test_original_format_is_served_from_env(original_files, monkeypatch):
    from fastapi.testclient import TestClient

    from captioner.service.app import create_app
    from captioner.service.settings import Settings

    for name, path in original_files.items():
        monkeypatch.setenv(name, str(path))
    settings = Settings(_env_file=None, rate_limit_per_minute=0)
    assert settings.original
    with TestClient(create_app(settings)) as client:
        r = client.post("/generate-caption/", files={"file": jpeg()})
        assert r.status_code == 200, r.text
        assert set(r.json()["caption"].split()) <= WORDS
        model = client.get("/health").json()["model"]
        assert model["format"] == "original" and model["encoder"] == "inception_v3"


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90) -> dict:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"the server exited with {proc.returncode}: {proc.stderr.read().decode()[-3000:]}"
            )
        try:
            r = httpx.get(url + "/health", timeout=2)
            if r.status_code == 200 and r.json()["status"] == "ok":
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become healthy")


@pytest.mark.slow
def test_python_app_py_serves_the_original_calls(tiny_bundle, tmp_path):
    """``cd scripts/evaluation && python app.py``, from a checkout (no PYTHONPATH), then the README's calls."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODEL_PATH", "TOKENIZER_PATH")}
    env.update(PORT=str(port), CAPTIONER_BUNDLE_PATH=str(tiny_bundle), CAPTIONER_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=REPO / "scripts" / "evaluation",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        health = _wait_healthy(url, proc)
        assert health["model"]["format"] == "bundle"
        image = tmp_path / "example.jpg"
        image.write_bytes(jpeg())
        # the original README: requests.post(url, files={"file": open("example.jpg", "rb")})
        with open(image, "rb") as f:
            r = httpx.post(url + "/generate-caption/", files={"file": f}, timeout=30)
        assert r.status_code == 200 and isinstance(r.json()["caption"], str)
        # curl -X POST "http://127.0.0.1:8000/generate-caption/" -F "file=@example.jpg"
        if shutil.which("curl"):
            cmd = ["curl", "-sS", "-X", "POST", url + "/generate-caption/", "-F", f"file=@{image}"]
            out = subprocess.run(cmd, capture_output=True, timeout=30, check=True)
            assert json.loads(out.stdout)["caption"] == r.json()["caption"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    logs = proc.stderr.read().decode().splitlines()
    access = [json.loads(line) for line in logs if '"captioner.service.access"' in line]
    assert access and access[0]["request_id"] and access[0]["status"] == 200


@pytest.mark.slow
def test_a_serve_only_environment_serves_original_artefacts(original_files, tmp_path):
    """The service in a python that cannot import tensorflow, keras or torch, MODEL_PATH & co. set: a caption
    over HTTP."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    env.update({k: str(v) for k, v in original_files.items()})
    env.update(PORT=str(port), HOST="127.0.0.1", CAPTIONER_THREADS="1", PYTHONPATH=str(REPO / "src"))
    code = BLOCK_TRAINING_LIBRARIES + "from captioner.cli import main\nsys.exit(main(['serve']))\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        health = _wait_healthy(url, proc)
        assert health["model"]["format"] == "original"
        r = httpx.post(
            url + "/generate-caption/", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert r.json()["caption"] and set(r.json()["caption"].split()) <= WORDS
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_a_fresh_serve_only_venv_from_setup_sh_serves_original_artefacts(original_files, tmp_path):
    """What a user of the original design does: `bash scripts/setup.sh serve` (no TensorFlow, Keras or torch
    installed), MODEL_PATH & co. set, `python app.py` from scripts/evaluation: a caption over HTTP."""
    import httpx

    venv = tmp_path / "venv"
    setup = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh"), "serve"], env={**os.environ, "CAPTIONER_VENV": str(venv)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert setup.returncode == 0, setup.stderr[-3000:]
    python = venv / "bin" / "python"
    for module in ("tensorflow", "keras", "torch"):
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{module} is installed in the serve-only environment"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONER_", "PYTHON"))}
    env.update({k: str(v) for k, v in original_files.items()})
    env.update(PORT=str(port), HOST="127.0.0.1", CAPTIONER_THREADS="1")
    proc = subprocess.Popen(
        [python, "app.py"], cwd=REPO / "scripts" / "evaluation", env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert _wait_healthy(url, proc, timeout_s=120)["model"]["format"] == "original"
        r = httpx.post(
            url + "/generate-caption/", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert r.json()["caption"] and set(r.json()["caption"].split()) <= WORDS
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_import_blocker_really_blocks():
    """Control for the test above: under the blocker, importing keras fails."""
    code = BLOCK_TRAINING_LIBRARIES + "import keras\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert out.returncode != 0 and b"blocked: a serve-only environment" in out.stderr
