"""InceptionV3 (Keras), the encoder of the original design: 299x299 input, 2048-d average-pooled features.

Weights: "imagenet" (Keras downloads them on a machine with internet), a local ``.h5``/``.weights.h5`` file, or
None (random, seeded; what the tests use). Export to ONNX goes through Keras' own exporter on the torch backend,
run in a subprocess because a process can only hold one Keras backend and training uses TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from captioner.errors import EncoderError


def build_feature_model(
    weights: str | Path | None = "imagenet", seed: int = 0, with_class_probs: bool = False
):
    """keras.Model: images [B, 299, 299, 3] in [-1, 1] -> pooled features [B, 2048].

    with_class_probs ("imagenet" or None weights only: a local file holds no classifier): outputs
    [features, ImageNet softmax [B, 1000]] of Keras' include_top network, whose classifier reads the same pooled
    features ("avg_pool").
    """
    import keras

    keras.utils.set_random_seed(seed)
    if with_class_probs and (weights is None or weights == "imagenet"):
        full = keras.applications.InceptionV3(weights=weights, include_top=True, input_shape=(299, 299, 3))
        return keras.Model(full.inputs, [full.get_layer("avg_pool").output, full.output])
    if weights is None or weights == "imagenet":
        return keras.applications.InceptionV3(
            weights=weights, include_top=False, pooling="avg", input_shape=(299, 299, 3)
        )
    path = Path(weights)
    if not path.is_file():
        raise EncoderError(f"InceptionV3 weights file not found: {path} (use 'imagenet' or a local .h5 file)")
    model = keras.applications.InceptionV3(
        weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3)
    )
    try:
        model.load_weights(str(path), skip_mismatch=False)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for a wrong file
        raise EncoderError(f"{path} does not hold InceptionV3 (include_top=False) weights: {exc}") from None
    return model


def _export_in_this_process(
    out_path: Path, weights: str | Path | None, seed: int, with_class_probs: bool
) -> None:
    import numpy as np

    model = build_feature_model(weights, seed, with_class_probs)
    model(np.zeros((1, 299, 299, 3), np.float32))  # the exporter needs a built, called model
    model.export(str(out_path), format="onnx", verbose=False)


def export_onnx(
    out_path: Path, weights: str | Path | None = "imagenet", seed: int = 0, with_class_probs: bool = False
) -> None:
    """Export to ONNX (input [B, 299, 299, 3] NHWC, output [B, 2048], with_class_probs: a second output [B, 1000]
    that export.py names "imagenet_probs") in a torch-backend subprocess."""
    env = dict(os.environ, KERAS_BACKEND="torch")
    head = str(with_class_probs and (weights is None or weights == "imagenet"))
    args = [
        sys.executable,
        "-m",
        "captioner.encoders.inception_v3",
        str(out_path),
        str(weights),
        str(seed),
        head,
    ]
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not Path(out_path).is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EncoderError(f"InceptionV3 export failed: {' | '.join(tail)}")


if __name__ == "__main__":  # the subprocess of export_onnx
    out, weights_arg, seed_arg, head_arg = sys.argv[1:5]
    _export_in_this_process(
        Path(out), None if weights_arg == "None" else weights_arg, int(seed_arg), head_arg == "True"
    )
