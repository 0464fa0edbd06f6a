"""What a loaded model is: the facts /health, the CLI and evaluation reports show about it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ModelFormat = Literal["bundle", "original"]


@dataclass(frozen=True)
class ModelInfo:
    """format: "bundle" (our checksummed folder) or "original" (the original design's .keras + tokenizer.pkl).
    version: 12 hex digits of the weights' sha256. max_length: tokens the model reads (original) or was trained
    on (bundle). path: the bundle folder or the .keras file. metrics: evaluation scores recorded with a bundle.
    architecture: the decoder, "lstm" (ours) or "original-merge" (the original design's, also inside a bundle
    made by ``captioner import-original``). sha256: a bundle's digest (of its manifest.json; the one to pin).
    providers: the onnxruntime provider each session really runs on ({"encoder": ..., "decoder": ...}).
    decoders: how many decoders decode together (more than 1: an ensemble, model/ensemble.py)."""

    format: ModelFormat
    version: str
    encoder: str
    vocab_size: int
    decoder_backend: str
    path: str
    max_length: int | None = None
    architecture: str = "lstm"
    metrics: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    providers: Mapping[str, str] = field(default_factory=dict)
    decoders: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"metrics": dict(self.metrics), "providers": dict(self.providers)}
