"""Caption confidence: a number in [0, 1] per caption, from the model's own token probabilities.

confidence = exp(log_prob / n): the geometric mean of the probabilities the decoder gave the caption's n tokens
(its words plus the end token when it finished), i.e. the model's average per-word certainty. 1 means every word
was certain; 0.5 means on average the model gave its chosen word even odds. It ranks captions by quality (dev
split: bench/results/confidence.json, made by ``python -m captioner.evaluation.confidence``); it is not a
probability that the caption is right.
"""

from __future__ import annotations

import math


def caption_confidence(log_prob: float, n_tokens: int) -> float:
    """Geometric-mean token probability in [0, 1]: exp(log_prob / n_tokens); 0.0 for an empty hypothesis.

    log_prob: sum of the natural-log probabilities of the caption's tokens (<= 0). n_tokens: how many tokens the
    sum covers (words + 1 when the end token was produced).
    """
    if n_tokens <= 0:
        return 0.0
    return float(min(1.0, max(0.0, math.exp(log_prob / n_tokens))))
