"""Caption confidence: a number in [0, 1] per caption, from the model's own token probabilities.

raw = exp(log_prob / n): the geometric mean of the probabilities the decoder gave the caption's n tokens (its
words plus the end token when it finished), i.e. the model's average per-word certainty.

A bundle may carry a Calibration fitted on training images (evaluation/confidence.py): a monotone map from raw to
the fraction of training captions with that raw value whose CIDEr against their references reached what a
typical human caption reaches (the median leave-one-out CIDEr of the references themselves). Calibrated, 0.7 means
"about 7 in 10 captions this confident read as well as a typical human caption". Monotone, so it ranks captions
exactly as raw does. Without a calibration the confidence is raw. The training images were seen in training, so
on unseen photos the calibrated value runs high (dev split: mean 0.38 for 31% of captions as good as a typical
human caption; bench/results/confidence.json).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def caption_confidence(log_prob: float, n_tokens: int) -> float:
    """Geometric-mean token probability in [0, 1]: exp(log_prob / n_tokens); 0.0 for an empty hypothesis.

    log_prob: sum of the natural-log probabilities of the caption's tokens (<= 0). n_tokens: how many tokens the
    sum covers (words + 1 when the end token was produced).
    """
    if n_tokens <= 0:
        return 0.0
    return float(min(1.0, max(0.0, math.exp(log_prob / n_tokens))))


@dataclass(frozen=True)
class Calibration:
    """A non-decreasing piecewise-linear map raw -> calibrated on knots ``raw`` (increasing) -> ``calibrated``
    (non-decreasing, in [0, 1]); flat beyond the end knots."""

    raw: tuple[float, ...]
    calibrated: tuple[float, ...]

    def __post_init__(self) -> None:
        x, y = np.asarray(self.raw, float), np.asarray(self.calibrated, float)
        if len(x) < 1 or len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ValueError("a calibration needs equal-length, non-decreasing raw and calibrated knots")
        if y.min() < 0 or y.max() > 1:
            raise ValueError("calibrated knots must lie in [0, 1]")

    def __call__(self, raw: float) -> float:
        return float(np.interp(raw, self.raw, self.calibrated))

    def to_dict(self) -> dict:
        return {"raw": list(self.raw), "calibrated": list(self.calibrated)}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(tuple(map(float, data["raw"])), tuple(map(float, data["calibrated"])))

    @classmethod
    def fit(cls, raw: Sequence[float], outcome: Sequence[float], floor: float = 0.01) -> Calibration:
        """Isotonic regression (pool adjacent violators) of ``outcome`` (e.g. 0/1) on ``raw``, kept within
        [floor, 1 - floor]: a few thousand captions never justify saying 0 or 1."""
        order = np.argsort(np.asarray(raw, float), kind="stable")
        x, y = np.asarray(raw, float)[order], np.asarray(outcome, float)[order]
        blocks: list[list[float]] = []  # [sum_y, count, x_min, x_max]
        for xi, yi in zip(x, y, strict=True):
            blocks.append([yi, 1.0, xi, xi])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
                s2, n2, _, hi = blocks.pop()
                blocks[-1][0] += s2
                blocks[-1][1] += n2
                blocks[-1][3] = hi
        knots_x: list[float] = []
        knots_y: list[float] = []
        for total, count, lo, hi in blocks:  # each block is flat from its first to its last raw value
            for xk in (lo, hi) if hi > lo else (lo,):
                if not knots_x or xk > knots_x[-1]:
                    knots_x.append(round(float(xk), 5))
                    knots_y.append(round(min(max(float(total / count), floor), 1.0 - floor), 4))
        return cls(tuple(knots_x), tuple(knots_y))
