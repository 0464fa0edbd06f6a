"""The original design: MODEL_PATH/TOKENIZER_PATH/WEIGHTS_PATH served via Captioner.from_legacy, and
``cd scripts/evaluation && python app.py`` answering the original curl/requests calls."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from service_helpers import free_port
from service_inputs import jpeg

REPO = Path(__file__).resolve().parents[2]
FEATURES, UNITS, MAX_LENGTH = 16, 8, 8
CAPTIONS = [
    "startseq a dog runs on the grass endseq",
    "startseq a black dog jumps endseq",
    "startseq a child runs on the beach endseq",
]


def tiny_inception_onnx(path: Path, size: int = 32) -> Path:
    """A stand-in for the exported InceptionV3: NHWC pixels -> mean over H, W -> Dense to 16 features, with
    the captioner.encoder metadata the runtime reads (the real export takes ~15 s; this takes milliseconds)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from captioner.encoders.export import METADATA_KEY

    weights = np.random.default_rng(0).normal(0, 1, (3, FEATURES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixels", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["features"]),
        ],
        "tiny_inception",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        initializer=[
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(weights, "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "name": "inception_v3",
        "preprocessing": {
            "size": size,
            "mean": [127.5] * 3,
            "std": [127.5] * 3,
            "layout": "NHWC",
            "resize": "squash",
        },
        "feature_size": FEATURES,
        "framework": "keras",
        "weights": None,
    }
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory) -> dict[str, Path]:
    """caption_model.keras (the tutorial's merge architecture, tiny) + weights + tokenizer.pkl + encoder."""
    keras = pytest.importorskip("keras")
    from keras import layers
    from keras.src.legacy.preprocessing.text import Tokenizer

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("original")
    tokenizer = Tokenizer()
    tokenizer.fit_on_texts(CAPTIONS)
    vocab = len(tokenizer.word_index) + 1
    inputs1 = keras.Input(shape=(FEATURES,))
    fe2 = layers.Dense(UNITS, activation="relu")(layers.Dropout(0.5)(inputs1))
    inputs2 = keras.Input(shape=(MAX_LENGTH,))
    se3 = layers.LSTM(UNITS)(layers.Dropout(0.5)(layers.Embedding(vocab, UNITS, mask_zero=True)(inputs2)))
    decoder2 = layers.Dense(UNITS, activation="relu")(layers.add([fe2, se3]))
    model = keras.Model([inputs1, inputs2], layers.Dense(vocab, activation="softmax")(decoder2))
    model.save(root / "caption_model.keras")
    (root / "weights").mkdir()
    model.save_weights(root / "weights" / "caption_model.weights.h5")
    (root / "tokenizer.pkl").write_bytes(pickle.dumps(tokenizer))
    return {
        "MODEL_PATH": root / "caption_model.keras",
        "WEIGHTS_PATH": root / "weights" / "caption_model.weights.h5",
        "TOKENIZER_PATH": root / "tokenizer.pkl",
        "CAPTIONER_ENCODER_PATH": tiny_inception_onnx(root / "inception_v3.onnx"),
    }


def test_original_format_is_served_from_env(legacy_files, monkeypatch):
    from fastapi.testclient import TestClient

    from captioner.service.app import create_app
    from captioner.service.settings import Settings

    for name, path in legacy_files.items():
        monkeypatch.setenv(name, str(path))
    settings = Settings(_env_file=None, rate_limit_per_minute=0)
    assert settings.legacy
    with TestClient(create_app(settings)) as client:
        r = client.post("/generate-caption/", files={"file": jpeg()})
        assert r.status_code == 200, r.text
        assert set(r.json()["caption"].split()) <= {w for c in CAPTIONS for w in c.split()} - {
            "startseq",
            "endseq",
        }
        model = client.get("/health").json()["model"]
        assert model["format"] == "legacy" and model["encoder"] == "inception_v3"


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
