"""The encoder's ImageNet head: class names and tags (top-k classes with probabilities).

The encoder ONNX file may carry a second output, ``imagenet_probs`` [B, 1000]: the softmax of the network's own
ImageNet classifier over the pooled features, computed in the same run. Class names ship with the package
(imagenet_classes.tsv; provenance in its header).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

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


@cache
def class_synsets() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per class, in classifier order: (WordNet 3.0 noun synset id such as "n02123045", all its lemmas)."""
    text = resources.files("captioner.encoders").joinpath("imagenet_classes.tsv").read_text("utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return tuple((wnid, tuple(x.strip() for x in lemmas.split(","))) for wnid, lemmas in rows)


def head_weights(encoder_onnx: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The ImageNet head of an encoder file: (weight float32 [1000, F], bias float32 [1000]), such that
    ``class_probabilities(features, *head_weights(path))`` is what its ``imagenet_probs`` output gives for the
    pooled features it outputs. Raises ValueError when the file has no such head (a Gemm into a Softmax)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(encoder_onnx)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    softmax = producer.get(IMAGENET_PROBS_OUTPUT)
    gemm = producer.get(softmax.input[0]) if softmax is not None else None
    if gemm is None or gemm.op_type != "Gemm":
        raise ValueError(f"{encoder_onnx} has no ImageNet head ({IMAGENET_PROBS_OUTPUT} from a Gemm)")

    def value(name: str) -> np.ndarray:
        node = producer.get(name)
        while node is not None and node.op_type == "Cast":  # float16 weights cast to float32 in the graph
            name, node = node.input[0], producer.get(node.input[0])
        return np.asarray(arrays[name], dtype=np.float32)

    attrs = {a.name: a for a in gemm.attribute}
    weight = value(gemm.input[1])
    weight = weight if attrs.get("transB") is not None and attrs["transB"].i else weight.T
    return np.ascontiguousarray(weight), value(gemm.input[2])


def class_probabilities(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Pooled features [N, F] -> class probabilities float32 [N, 1000] (softmax of features @ weight.T + bias)."""
    logits = features.astype(np.float32) @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
