"""The encoder's ImageNet head: class names and tags (top-k classes with probabilities).

The encoder ONNX file may carry a second output, ``imagenet_probs`` [B, 1000]: the softmax of the network's own
ImageNet classifier over the pooled features, computed in the same run. Class names ship with the package
(imagenet_classes.tsv; provenance in its header).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

# Name of the graph output that holds the class probabilities [B, NUM_CLASSES] (rows sum to 1).
IMAGENET_PROBS_OUTPUT = "imagenet_probs"
NUM_CLASSES = 1000
# Most tags an answer may ask for; results keep this many so that any smaller request is a slice.
MAX_TAGS_TOP_K = 20


@dataclass(frozen=True)
class Tag:
    """One ImageNet class: ``label`` (readable name), ``probability`` in [0, 1], ``class_id`` (0..999)."""

    label: str
    probability: float
    class_id: int


@cache
def class_names() -> tuple[str, ...]:
    """The 1,000 readable class names in classifier order (the first WordNet lemma of each class)."""
    text = resources.files("captioner.encoders").joinpath("imagenet_classes.tsv").read_text("utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    names = tuple(lemmas.split(",")[0].strip() for _, lemmas in rows)
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"imagenet_classes.tsv holds {len(names)} classes, expected {NUM_CLASSES}")
    return names


def top_tags(probs: np.ndarray, k: int = MAX_TAGS_TOP_K) -> list[tuple[Tag, ...]]:
    """Class probabilities [B, 1000] -> per image its ``k`` most probable classes, most probable first."""
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"expected class probabilities [B, {NUM_CLASSES}], got shape {probs.shape}")
    names = class_names()
    k = min(k, NUM_CLASSES)
    # argpartition then a sort of the k kept: O(1000) per image instead of a full sort.
    idx = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k else np.zeros((len(probs), 0), int)
    out = []
    for row, cols in zip(probs, idx, strict=True):
        cols = cols[np.argsort(-row[cols], kind="stable")]
        out.append(tuple(Tag(names[c], float(row[c]), int(c)) for c in cols))
    return out


def select_tags(tags: tuple[Tag, ...], top_k: int, min_prob: float) -> tuple[Tag, ...]:
    """The first ``top_k`` of ``tags`` (sorted, most probable first) with probability >= ``min_prob``."""
    return tuple(t for t in tags[:top_k] if t.probability >= min_prob)
