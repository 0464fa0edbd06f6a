"""Fake step functions for the search tests (tests/decode/): no model, log-probs from seeded pseudo-random draws,
so that brute force can find the exact answers."""

from __future__ import annotations

import zlib

import numpy as np

from captioner.decode.options import DecodeOptions

START, END = 0, 1


def opts(*args, **kwargs) -> DecodeOptions:
    """DecodeOptions ranking by raw log-probability (alpha 0) unless a test sets length_penalty, and stopping
    exactly (the brute-force answers) unless a test sets exact_stop."""
    kwargs.setdefault("length_penalty", 0.0)
    kwargs.setdefault("exact_stop", True)
    return DecodeOptions(*args, **kwargs)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


class HistoryStep:
    """A non-Markov fake: log-probs are a pseudo-random function of the image and the whole token history.

    The history lives in the state, so if search moved a beam without its state row, the log-probs it summed would
    differ from a replay of the hypothesis (checked by log_prob()). Every call checks that its rows advance in
    lockstep from START; one_search: also that the calls are one search's (call t feeds the t-th token).
    rare: tokens made unlikely (logit -8) at every step, so that a search must go out of its way for them.
    end_at: at this many words only the end token is possible (None: never forced), so every hypothesis finishes
    and a brute force over finished captions is exact.
    """

    def __init__(
        self,
        vocab: int,
        max_length: int,
        seed: int = 0,
        rare: tuple[int, ...] = (),
        end_at: int | None = None,
        one_search: bool = False,
    ) -> None:
        self.vocab, self.max_length, self.seed = vocab, max_length, seed
        self.rare, self.end_at, self.one_search = tuple(rare), end_at, one_search
        self.calls: list[int] = []  # rows per call

    def initial_state(self, images: list[int]) -> tuple[np.ndarray, ...]:
        history = np.full((len(images), self.max_length + 1), -1, dtype=np.int64)
        return np.asarray(images, dtype=np.int64), history

    def row(self, image: int, history: list[int]) -> np.ndarray:
        key = np.asarray([self.seed, image, *history], dtype=np.int64).tobytes()
        logits = np.random.default_rng(zlib.crc32(key)).normal(scale=2.0, size=self.vocab)
        logits[START] = -np.inf
        logits[list(self.rare)] = -8.0
        if self.end_at is not None and len(history) - 1 >= self.end_at:
            logits[:] = -np.inf
            logits[END] = 0.0
        return log_softmax(logits)

    def __call__(self, tokens, state):
        image, history = state
        t = int((history[0] >= 0).sum()) if len(history) else 0
        # Rows advance in lockstep: every row holds exactly t fed tokens, starting at START.
        assert (history[:, t] == -1).all() and (history[:, :t] >= 0).all()
        assert t == 0 or (history[:, 0] == START).all()
        assert not self.one_search or t == len(self.calls)
        self.calls.append(len(tokens))
        history = history.copy()
        history[:, t] = tokens
        log_probs = np.stack([self.row(int(i), history[r, : t + 1].tolist()) for r, i in enumerate(image)])
        return log_probs, (image, history)

    def log_prob(self, image: int, tokens: tuple[int, ...], finished: bool) -> float:
        seq = [START, *tokens, END]
        total = 0.0  # same order and precision as the search, so the sums match exactly
        for t in range(len(tokens) + int(finished)):
            total += float(self.row(image, seq[: t + 1])[seq[t + 1]])
        return total
