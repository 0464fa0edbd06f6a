"""Shared fixtures: tiny generated images, a random-weight encoder and a tiny random-weight bundle.

Everything is built in the test session (seconds), never downloaded.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from conftest_helpers import HostileServer, build_tiny_bundle, make_photo


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(4):
        p = folder / f"photo{i}.jpg"
        make_photo((96 + 16 * i, 64 + 8 * i), seed=i).save(p, quality=90)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_encoder_onnx(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 with random weights, exported to ONNX (the real export path, ~3 s)."""
    from captioner.encoders.export import export_encoder

    return export_encoder("efficientnet_lite0", tmp_path_factory.mktemp("enc") / "lite0.onnx", weights=None)


@pytest.fixture(scope="session")
def tiny_vocabulary():
    from captioner.data.vocabulary import Vocabulary

    return Vocabulary.build(
        ["a dog runs on the grass", "a cat sits on a mat", "two dogs play in the snow", "a man rides a bike"],
        min_count=1,
    )


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_encoder_onnx, tiny_vocabulary) -> Path:
    """A complete bundle folder: random tiny decoder + random-weight Lite0 encoder."""
    return build_tiny_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny", tiny_encoder_onnx, tiny_vocabulary, seed=0
    )


@pytest.fixture
def hostile():
    """A misbehaving HTTP server on 127.0.0.1 (conftest_helpers.HostileServer), stopped after the test."""
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
