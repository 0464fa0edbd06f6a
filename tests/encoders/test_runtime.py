"""onnxruntime session options: the process-wide shared arena (service startup) changes no result."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from captioner.encoders.runtime import session_options

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from PIL import Image
    from captioner.encoders.runtime import OnnxEncoder, share_cpu_arena

    path = sys.argv[1]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64 + 8 * i, 80, 3), dtype=np.uint8)) for i in range(3)]
    own = OnnxEncoder(path, threads=1).run(images).features
    share_cpu_arena()
    share_cpu_arena()  # idempotent
    sessions = [OnnxEncoder(path, threads=t) for t in (1, 2)]
    for encoder in sessions:
        for _ in range(2):
            assert np.array_equal(encoder.run(images).features, own)
            assert np.array_equal(encoder.run(images[:1]).features, encoder.run(images[:1]).features)
    print("ok")
    """
)


def test_sessions_ask_for_the_shared_arena():
    assert session_options(1).get_session_config_entry("session.use_env_allocators") == "1"


def test_sessions_on_the_shared_arena_compute_what_their_own_arenas_did(tiny_encoder_onnx):
    # A process of its own: the arena is registered for the whole process, once.
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_encoder_onnx)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
