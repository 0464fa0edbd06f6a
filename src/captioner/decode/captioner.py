"""The captioning engine: encoder (onnxruntime) + incremental step decoder + vocabulary -> captions.

Models are loaded by ``captioner.load`` (loading.py); this module only wires and runs the parts.

Used by the CLI, the evaluation and the service alike. Batched end to end: one encoder run per batch of
images and one step call per token for all beams of all images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from captioner.decode.options import DecodeOptions
from captioner.decode.search import Hypothesis, search
from captioner.encoders.images import DEFAULT_MAX_PIXELS, load_image, read_source
from captioner.encoders.runtime import OnnxEncoder
from captioner.encoders.sandbox import DecodePool
from captioner.model.info import ModelInfo


class StepDecoder(Protocol):
    vocab_size: int

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]: ...

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]: ...


class Vocab(Protocol):
    @property
    def start_id(self) -> int: ...

    @property
    def end_id(self) -> int: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Candidate:
    caption: str
    log_prob: float
    score: float


@dataclass(frozen=True)
class CaptionResult:
    """caption: the best candidate's text. candidates: n-best, best first. timings_ms: this image's share of
    the batch's encoder and decoder time."""

    caption: str
    candidates: tuple[Candidate, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "caption": self.caption,
            "candidates": [c.__dict__ for c in self.candidates],
            "timings_ms": self.timings_ms,
        }


class Captioner:
    """Wires an encoder, a step decoder and a vocabulary (``captioner.load`` builds them from files).
    Thread-safe: holds no per-call state; changes nothing in the process."""

    def __init__(
        self,
        encoder: OnnxEncoder,
        decoder: StepDecoder,
        vocabulary: Vocab,
        info: ModelInfo | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.encoder, self.decoder, self.vocabulary = encoder, decoder, vocabulary
        self.info = info
        self.max_pixels = max_pixels

    @property
    def model_info(self) -> ModelInfo | None:
        return self.info

    @property
    def version(self) -> str:
        return self.info.version if self.info is not None else "unknown"

    def load(
        self,
        source: bytes | str | Path,
        pool: DecodePool | None = None,
        wait_s: float = 30.0,
        max_pixels: int | None = None,
    ) -> Image.Image:
        """Decode one image exactly as feature extraction did (JPEG draft and reduction at the encoder's input size).

        pool: decode in its worker processes (a time limit that stops the work, a memory budget), waiting at most
        wait_s for a worker; None: in this thread. max_pixels: the limit for this call (default: the Captioner's).
        """
        spec = self.encoder.preprocessing
        limit = max_pixels or self.max_pixels
        if pool is None:
            return load_image(source, limit, draft_size=spec.size, resize=spec.resize)
        return pool.load(read_source(source), limit, spec.size, spec.resize, wait_s)

    def decode_features(
        self, features: np.ndarray, options: DecodeOptions = DecodeOptions()
    ) -> list[CaptionResult]:
        """Pooled features [B, F] -> one CaptionResult per row."""
        start = time.perf_counter()
        hyps = search(
            self.decoder.step,
            self.decoder.initial_state(features),
            options,
            self.vocabulary.start_id,
            self.vocabulary.end_id,
            step_topk=getattr(self.decoder, "step_topk", None),  # the ONNX step ranks tokens in its graph
        )
        per_image = (time.perf_counter() - start) * 1000 / max(len(hyps), 1)
        results = []
        for image_hyps in hyps:
            # Hypotheses that differ only in special tokens (e.g. <unk>, which decode() drops) read the same:
            # keep the best-scored of each text so the n-best alternatives are really different captions.
            texts: dict[str, Hypothesis] = {}
            for h in image_hyps:
                texts.setdefault(self.vocabulary.decode(h.tokens), h)
            cands = tuple(Candidate(text, h.log_prob, h.score) for text, h in texts.items())
            # An empty best caption (the model ended at once) is useless to a user: prefer any non-empty one.
            best = next((c.caption for c in cands if c.caption), cands[0].caption if cands else "")
            results.append(CaptionResult(best, cands, {"decoder": per_image}))
        return results

    def caption_images(
        self, images: Sequence[Image.Image], options: DecodeOptions = DecodeOptions()
    ) -> list[CaptionResult]:
        """RGB images -> captions, as one encoder batch and one decoding batch."""
        if not images:
            return []
        start = time.perf_counter()
        features = self.encoder.encode(images)
        enc_ms = (time.perf_counter() - start) * 1000 / len(images)
        results = self.decode_features(features, options)
        return [CaptionResult(r.caption, r.candidates, {"encoder": enc_ms, **r.timings_ms}) for r in results]

    def caption_files(
        self, paths: Sequence[str | Path], options: DecodeOptions = DecodeOptions(), batch_size: int = 32
    ) -> list[CaptionResult]:
        """Image files -> captions, in batches of ``batch_size``. An unreadable file raises ImageError."""
        out: list[CaptionResult] = []
        for s in range(0, len(paths), batch_size):
            out += self.caption_images([self.load(p) for p in paths[s : s + batch_size]], options)
        return out
