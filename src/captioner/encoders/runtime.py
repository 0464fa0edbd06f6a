"""Run an exported encoder through onnxruntime: images -> pooled features (and ImageNet class probabilities)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.encoders.export import METADATA_KEY
from captioner.encoders.imagenet import IMAGENET_PROBS_OUTPUT
from captioner.encoders.images import Preprocessing, preprocess_batch
from captioner.encoders.providers import resolve_providers, session_provider
from captioner.errors import EncoderError


def limit_blas_threads() -> None:
    """One BLAS thread for NumPy in a process that runs onnxruntime. Process-wide: call it at the edges (CLI,
    service startup, a Ray replica), never from library code.

    OpenBLAS's threads spin against onnxruntime's intra-op threads on the same cores; with one BLAS thread the
    decoder steps and the encoder stop fighting (measured 1.8-4x end to end on 2 cores, bench/ and PERF-NOTES).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    threadpool_limits(limits=1, user_api="blas")


_shared_arena = False


def share_cpu_arena() -> None:
    """Register one onnxruntime CPU arena for the whole process; every session made by ``session_options`` then
    allocates its tensors from it instead of growing an arena of its own. Process-wide: call it at the edges
    (service startup) before the sessions are made, never from library code. Idempotent.

    An arena only grows (to the largest batch a session has run) and is never given back, so each session's own
    arena holds its peak for good. The service runs several encoder sessions (the micro-batcher's lanes and the
    all-threads one, decode/microbatch.py): measured with the default bundle, three encoder sessions and the
    decoder's after batches of 4 and 8: 719 MB RSS with an arena each, 562 MB with one shared, the same speed.
    """
    global _shared_arena
    if _shared_arena:
        return
    import onnxruntime as ort

    cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(cpu, ort.OrtArenaCfg(0, -1, -1, -1))  # onnxruntime's default arena
    _shared_arena = True


def session_options(threads: int | None = None, stop_spinning_after_run: bool = True):
    """onnxruntime options: ``threads`` intra-op threads (default: all cores), all graph optimisations.

    stop_spinning_after_run: the pool's threads spin while a run lasts (the fastest hand-over between its ops)
    but stop as soon as it returns. The encoder and the decoder step each have a pool and run one after the
    other on the same cores: a pool left spinning steals them from the next run. Measured on 2 cores
    (bench/results): the next single-image InceptionV3 run 96 vs 62 ms when the decoder's pool spun on, beam
    search at batch 32 2.7 vs 1.5 ms per image when the encoder's did.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if stop_spinning_after_run:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    # The process's shared arena when one is registered (share_cpu_arena), else an arena of the session's own.
    opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


@dataclass(frozen=True)
class EncoderOutput:
    """One encoder run: features float32 [B, feature_size]; imagenet_probs float32 [B, 1000] (rows sum to 1), or
    None when the file has no ImageNet head (files exported before it, or a local InceptionV3 weights file)."""

    features: np.ndarray
    imagenet_probs: np.ndarray | None = None


class OnnxEncoder:
    """An ONNX encoder file plus the preprocessing stored in its metadata.

    encode(images) -> float32 [B, feature_size]; run(images) -> EncoderOutput (features and, when the file has
    the head, ImageNet class probabilities from the same onnxruntime run). Thread-safe (onnxruntime sessions are).
    stop_spinning_after_run: see session_options (True: leave the cores to the decoder step after each batch).
    execution_provider: auto, cpu, cuda or tensorrt (encoders/providers.py); ``provider`` is the one the
    session really got (e.g. "CPUExecutionProvider" after a fallback).
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        stop_spinning_after_run: bool = True,
        execution_provider: str = "cpu",
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise EncoderError(f"encoder file not found: {self.path}")
        providers = resolve_providers(execution_provider)
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=session_options(threads, stop_spinning_after_run),
                providers=providers,
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise EncoderError(f"{self.path} is not a valid ONNX encoder: {exc}") from None
        self.provider = session_provider(self.session, providers, "encoder")
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise EncoderError(
                f"{self.path} has no '{METADATA_KEY}' metadata: export it with captioner export-encoder"
            )
        self.info = json.loads(meta[METADATA_KEY])
        self.name: str = self.info["name"]
        self.preprocessing = Preprocessing.from_dict(self.info["preprocessing"])
        self.feature_size: int = int(self.info["feature_size"])
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.features_output = outputs[0]
        self.has_imagenet_probs = IMAGENET_PROBS_OUTPUT in outputs

    def _run(self, batch: np.ndarray, output_names: list[str]) -> list[np.ndarray]:
        if batch.ndim != 4:
            raise ValueError(f"expected a batch of preprocessed images [B, ...], got shape {batch.shape}")
        return self.session.run(
            output_names, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        )

    @staticmethod
    def _flat(features: np.ndarray) -> np.ndarray:
        return features.reshape(features.shape[0], -1).astype(np.float32, copy=False)

    def encode_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed batch [B, ...] -> features float32 [B, feature_size]."""
        return self._flat(self._run(batch, [self.features_output])[0])

    def run_arrays(self, batch: np.ndarray) -> EncoderOutput:
        """Preprocessed batch [B, ...] -> EncoderOutput, both outputs from one onnxruntime run."""
        if not self.has_imagenet_probs:
            return EncoderOutput(self.encode_arrays(batch))
        features, probs = self._run(batch, [self.features_output, IMAGENET_PROBS_OUTPUT])
        return EncoderOutput(self._flat(features), probs.astype(np.float32, copy=False))

    def run(self, images: Sequence[Image.Image]) -> EncoderOutput:
        """RGB PIL images -> EncoderOutput (features [B, feature_size], ImageNet probabilities [B, 1000] or None)."""
        if not images:
            probs = np.zeros((0, 1000), np.float32) if self.has_imagenet_probs else None
            return EncoderOutput(np.zeros((0, self.feature_size), np.float32), probs)
        return self.run_arrays(preprocess_batch(images, self.preprocessing))

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB PIL images -> features float32 [B, feature_size]."""
        if not images:
            return np.zeros((0, self.feature_size), np.float32)
        return self.encode_arrays(preprocess_batch(images, self.preprocessing))
