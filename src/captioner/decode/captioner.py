"""The captioning engine: encoder (onnxruntime) + incremental step decoder + vocabulary -> captions.

Models are loaded by ``captioner.load`` (loading.py); this module only wires and runs the parts.

Used by the CLI, the evaluation and the service alike. Batched end to end: one encoder run per batch of
images and one step call per token for all beams of all images.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from captioner.decode.confidence import Calibration, caption_confidence
from captioner.decode.constraint import constrained_search
from captioner.decode.options import DecodeOptions
from captioner.decode.search import Hypothesis, search
from captioner.encoders.imagenet import Tag, top_tags
from captioner.encoders.images import DEFAULT_MAX_PIXELS, load_image, read_source
from captioner.encoders.runtime import OnnxEncoder
from captioner.encoders.sandbox import DecodePool
from captioner.errors import ImageError
from captioner.model.consensus import ConsensusMemory
from captioner.model.info import ModelInfo
from captioner.model.labels import LabelConstraints, LabelMap

T = TypeVar("T")


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
    """confidence: in [0, 1], the geometric-mean token probability, calibrated when the Captioner has a
    calibration (decode/confidence.py)."""

    caption: str
    log_prob: float
    score: float
    confidence: float = 0.0


@dataclass(frozen=True)
class CaptionResult:
    """caption: the best candidate's text. candidates: n-best, best first. timings_ms: this image's share of
    the batch's encoder and decoder time. confidence: the best caption's (decode/confidence.py). tags: the encoder's
    most probable ImageNet classes (at most MAX_TAGS_TOP_K, most probable first; decode/answer.py cuts them to the
    request), None when the encoder file has no ImageNet head."""

    caption: str
    candidates: tuple[Candidate, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)
    confidence: float = 0.0
    tags: tuple[Tag, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "caption": self.caption,
            "confidence": self.confidence,
            "candidates": [c.__dict__ for c in self.candidates],
            "tags": None if self.tags is None else [t.__dict__ for t in self.tags],
            "timings_ms": self.timings_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionResult:
        """The inverse of to_dict (e.g. for a cached answer; entries cached before confidence and tags get the
        defaults)."""
        tags = data.get("tags")
        return cls(
            caption=data["caption"],
            candidates=tuple(Candidate(**c) for c in data["candidates"]),
            timings_ms=dict(data.get("timings_ms", {})),
            confidence=float(data.get("confidence", 0.0)),
            tags=None if tags is None else tuple(Tag(**t) for t in tags),
        )


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
        calibration: Calibration | None = None,
        labels: LabelMap | None = None,
        consensus: ConsensusMemory | None = None,
    ):
        """calibration: maps the raw caption confidence to a calibrated one (decode/confidence.py); None: raw.
        labels: the bundle's label map (model/labels.py), for DecodeOptions.label_constraint; None: no constraint.
        consensus: the bundle's consensus memory (model/consensus.py), for DecodeOptions.consensus_neighbours.
        """
        self.encoder, self.decoder, self.vocabulary = encoder, decoder, vocabulary
        self.info = info
        self.max_pixels = max_pixels
        self.calibration = calibration
        self.consensus = consensus
        token_to_id = getattr(vocabulary, "token_to_id", None)
        tokens = getattr(vocabulary, "tokens", None)
        self.labels = (
            LabelConstraints(labels, {t: token_to_id(t) for t in tokens})
            if labels is not None and token_to_id is not None and tokens is not None
            else None
        )

    def with_encoder(self, encoder: OnnxEncoder) -> Captioner:
        """This captioner with another encoder session (e.g. one with fewer threads, for an inference lane); the
        decoder, vocabulary and the rest are shared, not copied."""
        other = copy.copy(self)
        other.encoder = encoder
        return other

    def with_decoder(self, decoder: StepDecoder) -> Captioner:
        """This captioner with another decoder step (e.g. another backend of the same weights); the encoder, label
        map, consensus memory and the rest are shared, not copied."""
        other = copy.copy(self)
        other.decoder = decoder
        return other

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
        self,
        features: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        imagenet_probs: np.ndarray | None = None,
    ) -> list[CaptionResult]:
        """Pooled features [B, F] (and the encoder's ImageNet probabilities [B, 1000], if any) -> one
        CaptionResult per row."""
        start = time.perf_counter()
        reranks = (
            self.consensus is not None and options.consensus_neighbours > 0 and options.strategy == "beam"
        )
        # With reranking the whole beam is the pool it chooses from.
        searched = replace(options, n_best=options.beam_size) if reranks else options
        args = (
            self.decoder.step,
            self.decoder.initial_state(features),
            searched,
            self.vocabulary.start_id,
            self.vocabulary.end_id,
        )
        step_topk = getattr(self.decoder, "step_topk", None)  # the ONNX step ranks tokens in its graph
        # Tokens the text would drop (<unk>...) are never chosen: a dropped <unk> left captions ending in
        # "a" ("holding a <unk>" -> "holding a"). The original format keeps its own rules (no such list).
        banned = tuple(getattr(self.vocabulary, "never_generated", ()))
        picked = self.label_constraints(imagenet_probs, options)
        constraints: list[tuple[int, ...] | None] | None = None
        if picked is None:
            hyps = search(*args, step_topk, banned, options.no_repeat_ngram)
        else:
            constraints = [None if p is None else p[0] for p in picked]
            drops = [math.inf if p is None or p[1] >= options.label_constraint_always_prob
                     else options.label_constraint_max_score_drop for p in picked]  # fmt: skip
            hyps = constrained_search(
                *args, constraints, step_topk, banned, options.no_repeat_ngram, max_score_drop=drops,
                step_with_topk=getattr(self.decoder, "step_with_topk", None),
            )  # fmt: skip
        if reranks:
            hyps = self._rerank(features, hyps, options, constraints)
        per_image = (time.perf_counter() - start) * 1000 / max(len(hyps), 1)
        results = []
        for image_hyps in hyps:
            # Hypotheses that differ only in special tokens (e.g. <unk>, which decode() drops) read the same:
            # keep the best-scored of each text so the n-best alternatives are really different captions.
            texts: dict[str, Hypothesis] = {}
            for h in image_hyps:
                texts.setdefault(self.vocabulary.decode(h.tokens), h)
            cands = tuple(
                Candidate(text, h.log_prob, h.score, self._confidence(h)) for text, h in texts.items()
            )
            # An empty best caption (the model ended at once) is useless to a user: prefer any non-empty one.
            best = next((c for c in cands if c.caption), cands[0] if cands else Candidate("", 0.0, 0.0))
            results.append(CaptionResult(best.caption, cands, {"decoder": per_image}, best.confidence))
        if imagenet_probs is not None:
            results = [replace(r, tags=t) for r, t in zip(results, top_tags(imagenet_probs), strict=True)]
        return results

    def _rerank(
        self,
        features: np.ndarray,
        hyps: list[list[Hypothesis]],
        options: DecodeOptions,
        named: list[tuple[int, ...] | None] | None,
    ) -> list[list[Hypothesis]]:
        """Consensus reranking of each image's beam, cut to options.n_best. An image with a label constraint keeps
        its captions that name the object ahead of those that do not (the reranking chooses among them)."""
        assert self.consensus is not None
        texts = [[self.vocabulary.decode(h.tokens) for h in hs] for hs in hyps]
        scores = [[h.score for h in hs] for hs in hyps]
        orders = self.consensus.rerank(
            features, texts, scores, options.consensus_neighbours, options.consensus_weight
        )
        out = []
        for i, (hs, order) in enumerate(zip(hyps, orders, strict=True)):
            ranked = [hs[j] for j in order]
            wanted = named[i] if named is not None else None
            words = set(wanted) if wanted else None
            if words:
                ranked = sorted(ranked, key=lambda h: not words.intersection(h.tokens))  # stable
            out.append(ranked[: options.n_best])
        return out

    def label_constraints(
        self, imagenet_probs: np.ndarray | None, options: DecodeOptions
    ) -> list[tuple[tuple[int, ...], float] | None] | None:
        """Per image (the token ids its caption must hold one of, their word mass), or None where the mass is below
        options.label_constraint_min_prob; None for no constraint at all (the option is off, or the model has no
        label map, or the encoder no ImageNet head)."""
        if not options.label_constraint or self.labels is None or imagenet_probs is None:
            return None
        best = self.labels.best_words(imagenet_probs)
        return [
            (ids, mass) if ids and mass >= options.label_constraint_min_prob else None for ids, mass in best
        ]

    def _confidence(self, h: Hypothesis) -> float:
        raw = caption_confidence(h.log_prob, len(h.tokens) + h.finished)
        return raw if self.calibration is None else self.calibration(raw)

    def caption_images(
        self, images: Sequence[Image.Image], options: DecodeOptions = DecodeOptions()
    ) -> list[CaptionResult]:
        """RGB images -> captions, as one encoder batch and one decoding batch."""
        if not images:
            return []
        start = time.perf_counter()
        encoded = self.encoder.run(images)  # features and ImageNet probabilities from one encoder run
        enc_ms = (time.perf_counter() - start) * 1000 / len(images)
        results = self.decode_features(encoded.features, options, encoded.imagenet_probs)
        return [replace(r, timings_ms={"encoder": enc_ms, **r.timings_ms}) for r in results]

    def caption_each(
        self,
        sources: Sequence[T],
        options: DecodeOptions = DecodeOptions(),
        load: Callable[[T], Image.Image] | None = None,
        map: Callable[..., Iterable] = map,  # noqa: A002 - a thread pool's map decodes in parallel
    ) -> list[CaptionResult | ImageError]:
        """Decode each source on its own (``load``, default ``self.load``; an ImageError fails only its own
        item), then caption the good ones as one encoder batch and one decoding batch. One outcome per source, in
        order: its CaptionResult or its ImageError. Used by the batch endpoint and caption-dir alike."""
        read: Callable[[Any], Image.Image] = load or self.load

        def decode(source: T) -> Image.Image | ImageError:
            try:
                return read(source)
            except ImageError as exc:
                return exc

        decoded = list(map(decode, sources))
        good = [x for x in decoded if not isinstance(x, ImageError)]
        results = iter(self.caption_images(good, options))
        return [x if isinstance(x, ImageError) else next(results) for x in decoded]

    def caption_files(
        self, paths: Sequence[str | Path], options: DecodeOptions = DecodeOptions(), batch_size: int = 32
    ) -> list[CaptionResult]:
        """Image files -> captions, in batches of ``batch_size``. An unreadable file raises ImageError."""
        out: list[CaptionResult] = []
        for s in range(0, len(paths), batch_size):
            out += self.caption_images([self.load(p) for p in paths[s : s + batch_size]], options)
        return out
