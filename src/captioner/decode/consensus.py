"""Consensus reranking: of a model's n-best captions, prefer the one its nearest training images agree with.

Devlin et al. 2015 ("Exploring Nearest Neighbor Approaches for Image Captioning") and Mao et al. 2015 (m-RNN's
consensus reranking): the k training images whose encoder features are most similar (cosine) to the photo's
bring their human captions; each candidate of the beam is scored by CIDEr-D against those captions, plus
``weight`` times the model's own length-normalised score, and the best one is returned. The candidates are
still the model's own sentences: the memory only chooses among them, never puts a training caption in.

On Flickr8k dev (beam 5, 5 candidates, k 10, weight 0.2) it raises CIDEr from 0.476 to 0.534 and BLEU-4 from
0.196 to 0.206 with more distinct captions (717 vs 634): the beam's first choice is often its most generic
sentence ("a dog is running through the grass"); the neighbours' captions favour the specific one.

The memory (``consensus.npz`` in a bundle): the training images' pooled features (float16, unit-normalised)
and their normalised captions. Document frequencies for CIDEr-D come from the same captions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner.data.cider import CiderD, ReferencePool, WordIds

CONSENSUS_FILE = "consensus.npz"


class ConsensusMemory:
    """Training images' features and captions, ready to rerank candidates. Thread-safe after construction."""

    def __init__(self, features: np.ndarray, captions: Sequence[Sequence[str]]):
        """features [N, F] of N training images; captions: N lists of normalised captions (words and spaces)."""
        if len(features) != len(captions) or len(features) == 0:
            raise ValueError(f"{len(features)} feature rows but {len(captions)} caption lists")
        norms = np.linalg.norm(features.astype(np.float32), axis=1, keepdims=True)
        self.features = (features / np.maximum(norms, 1e-12)).astype(np.float16)
        self.captions = [list(c) for c in captions]
        self.words = WordIds()
        ids = [[self.words(c) for c in cs] for cs in self.captions]
        self.cider = CiderD(ids)
        flat = [c for cs in ids for c in cs]
        self.pool = ReferencePool(self.cider, flat)
        counts = np.array([len(cs) for cs in ids], dtype=np.int64)
        self.first_caption = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.caption_count = counts

    @property
    def size(self) -> int:
        return len(self.features)

    def neighbours(self, features: np.ndarray, k: int) -> np.ndarray:
        """int [B, k]: the k memory images most similar (cosine) to each row of features [B, F]."""
        q = features.astype(np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sims = q @ self.features.T.astype(np.float32)
        k = min(k, self.size)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)

    def consensus(self, features: np.ndarray, candidates: Sequence[Sequence[str]], k: int) -> list[np.ndarray]:
        """CIDEr-D of each image's candidate captions against its k nearest memory images' captions."""
        nearest = self.neighbours(features, k)
        refs = []
        for row in nearest:
            refs.append(
                np.concatenate(
                    [self.first_caption[j] + np.arange(self.caption_count[j]) for j in row]
                    or [np.zeros(0, np.int64)]
                )
            )
        hyps = [self.words.lookup(c) for cands in candidates for c in cands]
        pair_refs = [refs[i] for i, cands in enumerate(candidates) for _ in cands]
        scores = self.pool(hyps, pair_refs) if hyps else np.zeros(0)
        out, at = [], 0
        for cands in candidates:
            out.append(scores[at : at + len(cands)])
            at += len(cands)
        return out

    def rerank(
        self,
        features: np.ndarray,
        candidates: Sequence[Sequence[str]],
        model_scores: Sequence[Sequence[float]],
        k: int,
        weight: float,
    ) -> list[list[int]]:
        """For each image, the order (indices into its candidates) by consensus + weight * model score, best
        first; ties keep the model's order."""
        agreement = self.consensus(features, candidates, k)
        orders = []
        for cider, scores in zip(agreement, model_scores, strict=True):
            total = cider + weight * np.asarray(scores, dtype=np.float64)
            orders.append(np.argsort(-total, kind="stable").tolist())
        return orders

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        counts = np.array([len(cs) for cs in self.captions], dtype=np.int32)
        text = "\n".join(c for cs in self.captions for c in cs)
        with open(path, "wb") as f:
            np.savez_compressed(
                f, features=self.features, caption_counts=counts, captions=np.frombuffer(text.encode(), np.uint8)
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ConsensusMemory:
        with np.load(path, allow_pickle=False) as data:
            features = data["features"]
            counts = data["caption_counts"]
            lines = bytes(data["captions"]).decode().split("\n")
        if int(counts.sum()) != len(lines) or len(counts) != len(features):
            raise ValueError(f"{path}: caption counts do not match the captions or the features")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return cls(features, [lines[bounds[i] : bounds[i + 1]] for i in range(len(counts))])
