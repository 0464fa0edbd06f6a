"""The captioning engine: encoder (onnxruntime) + incremental step decoder + vocabulary -> captions.

Used by the CLI, the evaluation and the service alike. Batched end to end: one encoder run per batch of
images and one step call per token for all beams of all images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
from PIL import Image

from captioner.decode.confidence import Calibration, caption_confidence
from captioner.decode.options import DecodeOptions
from captioner.decode.search import Hypothesis, search
from captioner.encoders.imagenet import Tag, top_tags
from captioner.encoders.images import DEFAULT_MAX_PIXELS, load_image
from captioner.encoders.runtime import OnnxEncoder


class StepDecoder(Protocol):
    vocab_size: int

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, ...]: ...

    def step(
        self, tokens: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]: ...


DecoderBackend = Literal["onnx", "onnx-int8", "numpy"]
DECODER_BACKENDS: tuple[str, ...] = get_args(DecoderBackend)
# int8 by default: dev BLEU-1..4/METEOR/ROUGE-L/CIDEr equal to fp32's or better (models/default/README.md), a
# ~1.7x faster step, and, quantised per row, the same answer whatever else shares the batch (tests/model/).
DEFAULT_DECODER_BACKEND: DecoderBackend = "onnx-int8"


def step_decoder(reference, backend: DecoderBackend, threads: int | None = None):
    """The step decoder a backend name stands for, over a NumPy reference step (NumpyDecoder, or any step with
    ``graph_weights()``): "numpy" -> the reference itself; "onnx" / "onnx-int8" -> its onnxruntime graph in
    fp32 / int8 (model/onnx_step.py)."""
    if backend not in DECODER_BACKENDS:
        raise ValueError(f"decoder_backend must be one of {DECODER_BACKENDS}, got {backend!r}")
    if backend == "numpy":
        return reference
    from captioner.model.onnx_step import OnnxDecoder

    return OnnxDecoder(reference, threads=threads, precision="int8" if backend == "onnx-int8" else "fp32")


class Vocab(Protocol):
    start_id: int
    end_id: int

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


def limit_blas_threads() -> None:
    """One BLAS thread for NumPy in a process that runs onnxruntime.

    OpenBLAS's threads spin against onnxruntime's intra-op threads on the same cores; with one BLAS thread the
    decoder steps and the encoder stop fighting (measured 1.8-4x end to end on 2 cores, bench/ and PERF-NOTES).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    threadpool_limits(limits=1, user_api="blas")


class Captioner:
    """Wires an encoder, a step decoder and a vocabulary. Thread-safe: holds no per-call state."""

    def __init__(
        self,
        encoder: OnnxEncoder,
        decoder: StepDecoder,
        vocabulary: Vocab,
        info: dict | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        calibration: Calibration | None = None,
    ):
        """calibration: maps the raw caption confidence to a calibrated one (decode/confidence.py); None: raw."""
        self.encoder, self.decoder, self.vocabulary = encoder, decoder, vocabulary
        self.info = info or {}
        self.max_pixels = max_pixels
        self.calibration = calibration
        limit_blas_threads()

    @classmethod
    def from_bundle(
        cls,
        bundle=None,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decoder_backend: DecoderBackend = DEFAULT_DECODER_BACKEND,
    ) -> Captioner:
        """Load a bundle folder (or a loaded Bundle; default: the shipped one) without TensorFlow.

        decoder_backend: how the decoder step runs (model/onnx_step.py): "onnx-int8" (an onnxruntime graph with
        int8 matmuls, the default), "onnx" (the same graph in fp32: the reference's captions exactly) or "numpy"
        (NumpyDecoder, the reference implementation).
        """
        from captioner.model.bundle import Bundle, load_bundle
        from captioner.model.step import NumpyDecoder

        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        encoder = OnnxEncoder(bundle.encoder_path, threads=threads)
        if encoder.feature_size != bundle.config.feature_size:
            from captioner.errors import BundleError

            raise BundleError(f"{bundle.path}: encoder and decoder feature sizes differ")
        reference = NumpyDecoder.from_h5(bundle.config, bundle.weights_path)
        decoder = step_decoder(reference, decoder_backend, threads)
        m = bundle.manifest
        info = {
            "format": "bundle",
            "path": str(bundle.path),
            "version": bundle.version,
            "encoder": m["encoder"]["name"],
            "vocab_size": m["vocab_size"],
            "metrics": m.get("metrics", {}),
            "decoder_backend": decoder_backend,
        }
        calibration = m.get("confidence_calibration")
        calibration = Calibration.from_dict(calibration) if calibration else None
        return cls(encoder, decoder, bundle.vocabulary, info, max_pixels, calibration)

    @classmethod
    def from_legacy(
        cls,
        model_path: str | Path,
        tokenizer_path: str | Path,
        weights_path: str | Path | None = None,
        encoder_path: str | Path | None = None,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Captioner:
        """Artefacts of the original design (merge .keras + weights .h5 + tokenizer.pkl, InceptionV3 features).

        encoder_path: an InceptionV3 ONNX file from ``captioner export-encoder inception_v3``; needs TensorFlow.
        """
        from captioner.errors import BundleError
        from captioner.model.legacy import load_legacy

        if encoder_path is None:
            raise BundleError(
                "the original format has no encoder file: export one with "
                "'captioner export-encoder inception_v3 --out inception_v3.onnx' and pass it as the encoder"
            )
        encoder = OnnxEncoder(encoder_path, threads=threads)
        decoder, vocab, info = load_legacy(
            model_path, weights_path, tokenizer_path=tokenizer_path, feature_size=encoder.feature_size
        )
        from captioner.model.bundle import sha256_file

        info = dict(info, format="legacy", encoder=encoder.name, version=sha256_file(model_path)[:12])
        return cls(encoder, decoder, vocab, info, max_pixels)

    @property
    def model_info(self) -> dict:
        return dict(self.info)

    @property
    def version(self) -> str:
        return str(self.info.get("version", "unknown"))

    def load(self, source: bytes | str | Path) -> Image.Image:
        """Decode one image exactly as feature extraction did (JPEG draft at the encoder's input size)."""
        return load_image(source, max_pixels=self.max_pixels, draft_size=self.encoder.preprocessing.size)

    def decode_features(
        self,
        features: np.ndarray,
        options: DecodeOptions = DecodeOptions(),
        imagenet_probs: np.ndarray | None = None,
    ) -> list[CaptionResult]:
        """Pooled features [B, F] (and the encoder's ImageNet probabilities [B, 1000], if any) -> one
        CaptionResult per row."""
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
            cands = tuple(
                Candidate(text, h.log_prob, h.score, self._confidence(h)) for text, h in texts.items()
            )
            # An empty best caption (the model ended at once) is useless to a user: prefer any non-empty one.
            best = next((c for c in cands if c.caption), cands[0] if cands else Candidate("", 0.0, 0.0))
            results.append(CaptionResult(best.caption, cands, {"decoder": per_image}, best.confidence))
        if imagenet_probs is not None:
            results = [replace(r, tags=t) for r, t in zip(results, top_tags(imagenet_probs), strict=True)]
        return results

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

    def caption_files(
        self, paths: Sequence[str | Path], options: DecodeOptions = DecodeOptions(), batch_size: int = 32
    ) -> list[CaptionResult]:
        """Image files -> captions, in batches of ``batch_size``. An unreadable file raises ImageError."""
        out: list[CaptionResult] = []
        for s in range(0, len(paths), batch_size):
            out += self.caption_images([self.load(p) for p in paths[s : s + batch_size]], options)
        return out
