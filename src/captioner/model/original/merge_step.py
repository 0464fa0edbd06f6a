"""The original merge model as an incremental step, so our engine runs its weights without TensorFlow.

The model (``merge.py``) is
    fe     = relu(features @ W_fe + b_fe)                                   [B, U]
    s      = LSTM(Embedding(ids, mask_zero=True))   last state over the real (non-0) ids of a left-padded prefix
    probs  = softmax(relu((fe + s) @ W_1 + b_1) @ W_out + b_out)            [B, V]
With ``mask_zero`` the LSTM skips the padding on the left, so running it one token at a time from a zero state
gives the same last state as the original loop, which reran it over ``pad_sequences(prefix, maxlen=L)`` for every
word. Once a prefix is longer than L, pad_sequences keeps its last L tokens; ``OriginalStep`` then reruns the LSTM
over that window, so captions longer than the model's input stay identical to the original's.

``MergeStepDecoder`` is the NumPy reference; state per row (h [N, U], c [N, U], g [N, D]) with
g = fe @ W_1 + b_1 computed once per image, so a step is relu(h @ W_1 + g): the shape of our own decoder's step,
which is how ``graph_weights`` lets ``captioner.model.onnx_step.OnnxDecoder`` run this model in onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from captioner.model.original.merge import WEIGHT_NAMES, MergeModel
from captioner.model.step import log_softmax, lstm_cell

# The padding id's logit: the original stopped when it predicted id 0, and a search must never emit padding.
PAD_LOGIT = -1e9


class MergeStepDecoder:
    """StepDecoder (see captioner.decode.captioner) over the merge model's weights, float32. Thread-safe."""

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
        self.out_bias[0] = PAD_LOGIT

    @classmethod
    def from_model(cls, model: MergeModel) -> MergeStepDecoder:
        return cls(model.weights)

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
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise ValueError(f"features must be [B, {self.feature_size}], got shape {features.shape}")
        fe = np.maximum(features @ w["fe/kernel"] + w["fe/bias"], 0)
        zeros = np.zeros((fe.shape[0], self.units), np.float32)
        return zeros, zeros.copy(), fe @ w["hidden/kernel"] + w["hidden/bias"]

    def lstm(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids int [N, T] -> the LSTM's last (h, c) [N, U] from a zero state, skipping id 0 (mask_zero)."""
        h = np.zeros((ids.shape[0], self.units), np.float32)
        c = np.zeros_like(h)
        for t in range(ids.shape[1]):
            h_new, c_new = lstm_cell(self.token_gates[ids[:, t]] + h @ self.w["lstm/recurrent_kernel"], c)
            real = (ids[:, t] != 0)[:, None]  # a masked step carries the state over, as Keras does
            h, c = np.where(real, h_new, h), np.where(real, c_new, c)
        return h, c

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """tokens [N] -> (log_probs float32 [N, V], new state). Keras gate order i, f, c, o."""
        h, c, g = state
        w = self.w
        h, c = lstm_cell(self.token_gates[np.asarray(tokens, np.int64)] + h @ w["lstm/recurrent_kernel"], c)
        hidden = np.maximum(h @ w["hidden/kernel"] + g, 0)  # = relu((fe + h) @ W_1 + b_1)
        logits = hidden @ w["out/kernel"] + self.out_bias
        return log_softmax(logits).astype(np.float32, copy=False), (h, c, g)


# (tokens [N], state, k) -> (values [N, k], ids [N, k], new state), as decode.search's TopkStepFn.
TopkFn = Callable[
    [np.ndarray, tuple[np.ndarray, ...], int], tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]
]


class OriginalStep:
    """The step the engine runs for an original model: a core step over (h, c, g) (the NumPy reference or its
    onnxruntime graph) plus the window of the last ``max_length`` tokens, for pad_sequences' truncation.

    State: (h, c, g, window int64 [N, L], length int64 [N]); every array has one row per hypothesis, so search
    can reorder them. Thread-safe.
    """

    def __init__(self, core: Any, reference: MergeStepDecoder, max_length: int):
        self.core, self.reference, self.max_length = core, reference, max_length
        self.vocab_size = reference.vocab_size
        self.feature_size = reference.feature_size
        # Without a core that ranks in its graph, None: the searches then rank the full log-probs themselves.
        self.step_topk: TopkFn | None = (
            self._step_topk if getattr(core, "step_topk", None) is not None else None
        )

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        h, c, g = self.core.initial_state(features)
        n = h.shape[0]
        return h, c, g, np.zeros((n, self.max_length), np.int64), np.zeros(n, np.int64)

    def _advance(self, tokens: np.ndarray, state: tuple[np.ndarray, ...]):
        h, c, g, window, length = state
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        window = np.concatenate([window[:, 1:], tokens[:, None]], axis=1)
        length = length + 1
        over = length > self.max_length
        if over.any():  # pad_sequences dropped the oldest token: the LSTM state is that of the last L - 1
            h, c = h.copy(), c.copy()
            h[over], c[over] = self.reference.lstm(window[over, :-1])
        return tokens, (h, c, g), window, length

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """tokens [N] (each row's previous token) -> (log_probs float32 [N, V], new state)."""
        tokens, core_state, window, length = self._advance(tokens, state)
        log_probs, (h, c, g) = self.core.step(tokens, core_state)
        return log_probs, (h, c, g, window, length)

    def _step_topk(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...], k: int
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """-> (values [N, k] best first, ids [N, k], new state), ranked in the core's graph."""
        tokens, core_state, window, length = self._advance(tokens, state)
        values, ids, (h, c, g) = self.core.step_topk(tokens, core_state, k)
        return values, ids, (h, c, g, window, length)
