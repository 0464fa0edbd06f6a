"""Incremental NumPy decoder: one LSTM step per token for a batch of rows, no TensorFlow.

Implements exactly the equations of ``decoder.build_decoder`` (inference mode: dropout off) on the same
weights, read from the Keras ``.weights.h5`` file with h5py. State per row: (h [N, H], c [N, H], v [N, E]);
the image projection v rides along in the state so beam search can reorder it with the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from captioner.errors import BundleError
from captioner.model.config import DecoderConfig

# Where Keras 3 stores each layer of the functional decoder in a .weights.h5 file: layers are keyed by
# snake-cased class name plus a counter in model.layers order (not by layer name), so the Dense layers
# appear as dense, dense_1, ... in the order build_decoder creates them.
_H5_KEYS = {
    "image_proj": "layers/dense",
    "init_h": "layers/dense_1",
    "init_c": "layers/dense_2",
    "lstm_proj": "layers/dense_3",
    "logits": "layers/dense_4",
    "embedding": "layers/embedding",
    "lstm": "layers/lstm/cell",
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free and as accurate as 1 / (1 + exp(-x))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def lstm_cell(gates: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Keras LSTM step from pre-activation gates [N, 4H] (order i, f, c, o) and cell state [N, H] -> (h, c)."""
    H = c.shape[1]
    i = _sigmoid(gates[:, :H])
    f = _sigmoid(gates[:, H : 2 * H])
    g = np.tanh(gates[:, 2 * H : 3 * H])
    o = _sigmoid(gates[:, 3 * H :])
    c = f * c + i * g
    return o * np.tanh(c), c


def weight_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight the decoder of ``config`` has (as NumpyDecoder takes them)."""
    H, E, V, F = config.hidden_dim, config.embed_dim, config.vocab_size, config.feature_size
    return {
        "image_proj/kernel": (F, E), "image_proj/bias": (E,),
        "init_h/kernel": (E, H), "init_h/bias": (H,), "init_c/kernel": (E, H), "init_c/bias": (H,),
        "embedding": (V, E),
        "lstm/kernel": (E, 4 * H), "lstm/recurrent_kernel": (H, 4 * H), "lstm/bias": (4 * H,),
        "lstm_proj/kernel": (H, E), "lstm_proj/bias": (E,), "logits/kernel": (E, V), "logits/bias": (V,),
    }  # fmt: skip


class NumpyDecoder:
    """StepDecoder over the LSTM decoder's weights (float32)."""

    def __init__(self, config: DecoderConfig, weights: dict[str, np.ndarray]):
        self.config = config
        self.vocab_size = config.vocab_size
        w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        expected = weight_shapes(config)
        for name, shape in expected.items():
            if name not in w or w[name].shape != shape:
                got = w[name].shape if name in w else "missing"
                raise BundleError(
                    f"decoder weight {name} should have shape {shape}, got {got}: weights and config disagree"
                )
        self.w = w
        # The input-side LSTM matmul is a table lookup: embedding @ kernel precomputed per word ([V, 4H]).
        self.token_gates = w["embedding"] @ w["lstm/kernel"] + w["lstm/bias"]

    @classmethod
    def from_h5(cls, config: DecoderConfig, path: str | Path) -> NumpyDecoder:
        """Read a Keras .weights.h5 written by ``model.save_weights`` for ``build_decoder(config)``."""
        import h5py

        try:
            with h5py.File(path, "r") as f:
                w = {}
                for name, key in _H5_KEYS.items():
                    names = {
                        "embedding": ["embedding"],
                        "lstm": ["lstm/kernel", "lstm/recurrent_kernel", "lstm/bias"],
                    }.get(name, [f"{name}/kernel", f"{name}/bias"])
                    for i, wname in enumerate(names):
                        w[wname] = f[f"{key}/vars/{i}"][()]
        except (OSError, KeyError) as exc:
            raise BundleError(f"{path} is not a weights file of this decoder: {exc}") from None
        return cls(config, w)

    def graph_weights(self) -> dict[str, np.ndarray]:
        """The arrays of ``onnx_step.build_step_graph`` (the same step as an onnxruntime graph)."""
        w = self.w
        return {
            "token_gates": self.token_gates,
            "recurrent_kernel": w["lstm/recurrent_kernel"],
            "proj_kernel": w["lstm_proj/kernel"],
            "proj_bias": w["lstm_proj/bias"],
            "logits_kernel": w["logits/kernel"],
            "logits_bias": w["logits/bias"],
        }

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        """features [B, F] -> (h0 [B, H], c0 [B, H], v [B, E])."""
        w = self.w
        v = np.maximum(
            features.astype(np.float32, copy=False) @ w["image_proj/kernel"] + w["image_proj/bias"], 0
        )
        h = np.tanh(v @ w["init_h/kernel"] + w["init_h/bias"])
        c = np.tanh(v @ w["init_c/kernel"] + w["init_c/bias"])
        return h, c, v

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """tokens int [N], state (h, c, v) -> (log_probs float32 [N, V], new state). Keras gate order i, f, c, o."""
        h, c, v = state
        w = self.w
        h, c = lstm_cell(self.token_gates[tokens] + h @ w["lstm/recurrent_kernel"], c)
        z = np.maximum(h @ w["lstm_proj/kernel"] + w["lstm_proj/bias"] + v, 0)
        logits = z @ w["logits/kernel"] + w["logits/bias"]
        return log_softmax(logits).astype(np.float32, copy=False), (h, c, v)
