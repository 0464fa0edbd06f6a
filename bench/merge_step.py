"""An incremental NumPy step for the tutorial "merge" captioner, so our engine can run the original model's weights.

The tutorial model (``bench.baseline.build_merge_model``) is
    fe     = relu(features @ W_fe + b_fe)                                   [B, U]
    s      = LSTM(Embedding(ids, mask_zero=True))   last state over the real (non-0) ids of a left-padded prefix
    logits = relu((fe + s) @ W_1 + b_1) @ W_out + b_out,  softmax          [B, V]
With ``mask_zero`` the LSTM skips the padding on the left, so running it one token at a time from a zero state
gives the same last state as rerunning it over the whole padded prefix: exact while the prefix fits in
``max_length`` (the tutorial's pad_sequences truncates longer prefixes; captions here never get that long).

State per row: (h [N, U], c [N, U], g [N, U]) with g = fe @ W_1 + b_1, computed once per image, so that a step is
relu(h @ W_1 + g): the same layers as our decoder's step, which is how ``graph_weights`` lets
``captioner.model.onnx_step.OnnxDecoder`` run this model in onnxruntime. Weights come from ``merge_weights.npz``
written next to the Keras model by ``bench.baseline`` (named by role, so no Keras is needed to read them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from captioner.model.step import log_softmax, lstm_cell

WEIGHT_NAMES = (
    "fe/kernel", "fe/bias", "embedding", "lstm/kernel", "lstm/recurrent_kernel", "lstm/bias",
    "hidden/kernel", "hidden/bias", "out/kernel", "out/bias",
)  # fmt: skip


class MergeStepDecoder:
    """StepDecoder (see captioner.decode.captioner) over the merge model's weights, float32.

    Padding (id 0) gets log-probability -inf-like (as LegacyStepDecoder does): the tutorial stopped on id 0, and
    a search must never emit padding as a word.
    """

    def __init__(self, weights: dict[str, np.ndarray]):
        missing = [n for n in WEIGHT_NAMES if n not in weights]
        if missing:
            raise ValueError(f"merge weights lack {missing}")
        w = {n: np.ascontiguousarray(weights[n], dtype=np.float32) for n in WEIGHT_NAMES}
        self.units = w["lstm/recurrent_kernel"].shape[0]
        self.vocab_size = w["out/kernel"].shape[1]
        self.feature_size = w["fe/kernel"].shape[0]
        self.w = w
        # Embedding then input kernel is a per-word table: [V, 4U]; one row gather per token instead of a matmul.
        self.token_gates = w["embedding"] @ w["lstm/kernel"] + w["lstm/bias"]
        self.out_bias = w["out/bias"].copy()
        self.out_bias[0] = -1e9  # padding

    @classmethod
    def from_npz(cls, path: str | Path) -> MergeStepDecoder:
        with np.load(path) as f:
            return cls({k: f[k] for k in f.files})

    def graph_weights(self) -> dict[str, np.ndarray]:
        """The arrays of ``captioner.model.onnx_step.build_step_graph`` for this model (see the module doc)."""
        w = self.w
        return {
            "token_gates": self.token_gates,
            "recurrent_kernel": w["lstm/recurrent_kernel"],
            "proj_kernel": w["hidden/kernel"],
            "proj_bias": np.zeros(w["hidden/kernel"].shape[1], np.float32),  # b_1 is in g
            "logits_kernel": w["out/kernel"],
            "logits_bias": self.out_bias,
        }

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        """features [B, F] -> (h0 = 0, c0 = 0, g) with g = relu(features @ W_fe + b_fe) @ W_1 + b_1."""
        w = self.w
        fe = np.maximum(np.asarray(features, np.float32) @ w["fe/kernel"] + w["fe/bias"], 0)
        zeros = np.zeros((fe.shape[0], self.units), np.float32)
        return zeros, zeros.copy(), fe @ w["hidden/kernel"] + w["hidden/bias"]

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """tokens [N] -> (log_probs float32 [N, V], new state). Keras gate order i, f, c, o."""
        h, c, g = state
        w = self.w
        h, c = lstm_cell(self.token_gates[np.asarray(tokens, np.int64)] + h @ w["lstm/recurrent_kernel"], c)
        hidden = np.maximum(h @ w["hidden/kernel"] + g, 0)  # = relu((fe + h) @ W_1 + b_1)
        logits = hidden @ w["out/kernel"] + self.out_bias
        log_probs = log_softmax(logits)
        return log_probs.astype(np.float32, copy=False), (h, c, g)
