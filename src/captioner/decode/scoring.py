"""Score given captions with the model (teacher forcing through the step): how confident it is in any caption.

Used to check that the confidence means something (the model's own caption should beat a nonsense one) and for
re-ranking or filtering captions that come from elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from captioner.decode.confidence import caption_confidence


def sequence_log_probs(
    step, state: tuple[np.ndarray, ...], sequences: Sequence[Sequence[int]], start_id: int, end_id: int
) -> list[tuple[float, int]]:
    """Per row of ``state`` the sum of log-probabilities of its sequence followed by the end token.

    step: ``step(tokens [N], state) -> (log_probs [N, V], state)``. sequences: word ids without start/end, one
    per row. Returns (log_prob, n_tokens) with n_tokens = len(sequence) + 1 (the end token).
    """
    n = len(sequences)
    length = max((len(s) for s in sequences), default=0) + 1
    targets = np.full((n, length), -1, np.int64)
    for i, s in enumerate(sequences):
        targets[i, : len(s)] = s
        targets[i, len(s)] = end_id
    totals = np.zeros(n, np.float64)
    tokens = np.full(n, start_id, np.int64)
    for t in range(length):
        log_probs, state = step(tokens, state)
        live = targets[:, t] >= 0
        totals[live] += np.asarray(log_probs)[live, targets[live, t]]
        tokens = np.where(live, targets[:, t], end_id)
    return [(float(totals[i]), len(s) + 1) for i, s in enumerate(sequences)]


def caption_confidences(captioner, features: np.ndarray, captions: Sequence[str]) -> list[float]:
    """Confidence (as the Captioner reports it, calibrated if it has a calibration) of each caption for one
    image's pooled features [F] or [1, F]. Unknown words count as ``<unk>``."""
    vocab = captioner.vocabulary
    sequences = [vocab.encode(c) for c in captions]
    rows = np.repeat(np.asarray(features, np.float32).reshape(1, -1), len(captions), axis=0)
    scored = sequence_log_probs(
        captioner.decoder.step, captioner.decoder.initial_state(rows), sequences, vocab.start_id, vocab.end_id
    )
    raw = [caption_confidence(lp, n) for lp, n in scored]
    return raw if captioner.calibration is None else [captioner.calibration(x) for x in raw]
