"""An ensemble of LSTM decoders as one step decoder: the members' probabilities averaged at every step.

Members share the vocabulary (the same training captions and ``min_count`` give the same one) and differ in their
weights (seeds). The state is the members' states side by side, (h [N, sum H], c [N, sum H], v [N, sum E]), so
the searches, which only reorder state rows, run an ensemble as they run one decoder; ``graph_weights`` gives
``onnx_step.build_step_graph`` every member's arrays under its prefix (m0/, m1/, ...): one onnxruntime graph
runs all members in each step.

    log p(w | prefix) = log( (1/M) * sum_m p_m(w | prefix) )

Probabilities, not log-probabilities, are averaged: the result is a distribution again (what length
normalisation and the caption confidence assume), as in fairseq's ensembles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from captioner.model.step import NumpyDecoder


class EnsembleDecoder:
    """StepDecoder over several ``NumpyDecoder`` members of one vocabulary (float32, NumPy)."""

    def __init__(self, members: Sequence[NumpyDecoder]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 decoders, got {len(members)}")
        sizes = {m.vocab_size for m in members}
        features = {m.config.feature_size for m in members}
        if len(sizes) > 1 or len(features) > 1:
            raise ValueError(
                f"ensemble members must share the vocabulary and the encoder: vocabulary sizes {sorted(sizes)}, "
                f"feature sizes {sorted(features)}"
            )
        self.members = list(members)
        self.config = members[0].config
        self.vocab_size = members[0].vocab_size
        hidden = [m.config.hidden_dim for m in members]
        embed = [m.config.embed_dim for m in members]
        self._h_splits = np.cumsum(hidden)[:-1]
        self._e_splits = np.cumsum(embed)[:-1]

    def graph_weights(self) -> dict[str, np.ndarray]:
        """Every member's ``graph_weights()`` under its prefix m0/, m1/, ... (onnx_step.build_step_graph)."""
        return {f"m{i}/{k}": a for i, m in enumerate(self.members) for k, a in m.graph_weights().items()}

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]:
        """features [B, F] -> (h0 [B, sum H], c0 [B, sum H], v [B, sum E])."""
        states = [m.initial_state(features) for m in self.members]
        return tuple(np.concatenate(parts, axis=1) for parts in zip(*states, strict=True))

    def _split(self, state: tuple[np.ndarray, ...]) -> list[tuple[np.ndarray, ...]]:
        h, c, v = state
        return list(
            zip(
                np.split(h, self._h_splits, axis=1),
                np.split(c, self._h_splits, axis=1),
                np.split(v, self._e_splits, axis=1),
                strict=True,
            )
        )

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """tokens int [N], state -> (log of the members' mean probabilities float32 [N, V], new state)."""
        outs = [m.step(tokens, s) for m, s in zip(self.members, self._split(state), strict=True)]
        stacked = np.stack([lp for lp, _ in outs]).astype(np.float64)
        top = stacked.max(axis=0)
        mean = top + np.log(np.exp(stacked - top).mean(axis=0))
        new = tuple(np.concatenate(parts, axis=1) for parts in zip(*(s for _, s in outs), strict=True))
        return mean.astype(np.float32), new
