"""Artefacts of the original design, made with Keras the way the tutorial made them, and its per-word Keras loop
as a test oracle (importable by tests; Keras is imported only by the functions that need it)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

CAPTIONS = [
    "startseq a dog runs on the grass endseq",
    "startseq a black dog jumps endseq",
    "startseq a child runs on the beach endseq",
]
FEATURES, UNITS, MAX_LENGTH = 16, 8, 8
VOCAB = 13  # the 12 distinct words of CAPTIONS + padding id 0
LOG_EPS = 1e-9


def keras_tokenizer(captions: list[str] = CAPTIONS, **kwargs: Any) -> Any:
    from keras.src.legacy.preprocessing.text import Tokenizer  # Keras 3 still ships the original class here

    tokenizer = Tokenizer(**kwargs)
    tokenizer.fit_on_texts(captions)
    return tokenizer


def write_original_artefacts(
    root: Path,
    tokenizer: Any = None,
    *,
    max_length: int = MAX_LENGTH,
    units: int = UNITS,
    weight_scale: float = 0.3,
    seed: int = 0,
) -> dict[str, Any]:
    """caption_model.keras with random weights, then new weights saved to weights/caption_model.weights.h5 only
    (so a test can tell whether the .weights.h5 was applied), tokenizer.pkl and a tiny InceptionV3 stand-in."""
    import keras

    from captioner.model.original.merge import build_merge_model

    tokenizer = tokenizer or keras_tokenizer()
    vocab = len(tokenizer.word_index) + 1
    keras.utils.set_random_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    model = build_merge_model(keras, FEATURES, vocab, max_length, units)
    model.save(root / "caption_model.keras")
    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        layer.set_weights([w + rng.normal(0, weight_scale, w.shape) for w in layer.get_weights()])
    out = model.layers[-1]
    kernel, bias = out.get_weights()
    bias[0] = -10.0  # a trained model never predicts padding (it is never a target)
    out.set_weights([kernel, bias])
    (root / "weights").mkdir(exist_ok=True)
    model.save_weights(root / "weights" / "caption_model.weights.h5")
    (root / "tokenizer.pkl").write_bytes(pickle.dumps(tokenizer))
    return {
        "model": model,
        "tokenizer": tokenizer,
        "model_path": root / "caption_model.keras",
        "weights_path": root / "weights" / "caption_model.weights.h5",
        "tokenizer_path": root / "tokenizer.pkl",
        "encoder_path": tiny_inception_onnx(root / "inception_v3.onnx"),
    }


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
        "preprocessing": {"size": size, "mean": [127.5] * 3, "std": [127.5] * 3, "layout": "NHWC", "resize": "squash"},
        "feature_size": FEATURES,
        "framework": "keras",
        "weights": None,
    }  # fmt: skip
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


class KerasLoopStep:
    """The original loop as a StepDecoder (the oracle): the state keeps the whole token prefix and every step
    reruns the Keras model over ``pad_sequences(prefix, maxlen=max_length)`` (padding and truncating 'pre').

    State: (features [N, F], prefix [N, max_length] int32 right-aligned, length [N]). log_probs are
    ``log(softmax + LOG_EPS)`` with padding (id 0) at log(LOG_EPS): the original stopped on id 0.
    """

    def __init__(self, model: Any):
        features_input, ids_input = model.inputs
        self.model = model
        self.feature_size = int(features_input.shape[-1])
        self.max_length = int(ids_input.shape[-1])
        self.vocab_size = int(model.outputs[0].shape[-1])

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        features = np.asarray(features, dtype=np.float32)
        n = features.shape[0]
        return features, np.zeros((n, self.max_length), np.int32), np.zeros(n, np.int32)

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        features, prefix, length = state
        tokens = np.asarray(tokens).reshape(-1).astype(np.int32)
        prefix = np.concatenate([prefix[:, 1:], tokens[:, None]], axis=1)
        if prefix.shape[0] == 0:
            return np.zeros((0, self.vocab_size), np.float32), (features, prefix, length + 1)
        probs = np.asarray(
            self.model([features, prefix.astype(np.float32)], training=False), dtype=np.float32
        )
        log_probs = np.log(probs + np.float32(LOG_EPS))
        log_probs[:, 0] = np.log(np.float32(LOG_EPS))
        return log_probs, (features, prefix, length + 1)


def tutorial_generate(
    model: Any, tokenizer: Any, photo: np.ndarray, max_length: int, steps: int | None = None
):
    """The original generation loop, verbatim but for recording the probability of each chosen word."""
    from keras.utils import pad_sequences

    in_text, ids, probs = "startseq", [], []
    for _ in range(steps or max_length):
        sequence = tokenizer.texts_to_sequences([in_text])[0]
        sequence = pad_sequences([sequence], maxlen=max_length)
        yhat = model.predict([photo, sequence], verbose=0)
        idx = int(np.argmax(yhat))
        word = tokenizer.index_word.get(idx)
        if word is None:
            break
        ids.append(idx)
        probs.append(yhat[0])
        in_text += " " + word
        if word == "endseq":
            break
    return ids, probs
