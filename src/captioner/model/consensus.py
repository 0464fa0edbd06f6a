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

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner.data.cider import CiderD, DocumentFrequency, ReferencePool, WordIds

CONSENSUS_FILE = "consensus.npz"


class ConsensusMemory:
    """Training images' features and captions, ready to rerank candidates. Thread-safe after construction."""

    def __init__(self, features: np.ndarray, captions: Sequence[Sequence[str]], dims: int | None = 256):
        """features [N, F] of N training images; captions: N lists of normalised captions (words and spaces).
        dims: keep the features' first ``dims`` principal components (None: all). 256 of Lite2's 1,280 keep
        the dev scores (CIDEr 0.530 vs 0.534, BLEU-4 0.208 vs 0.206) at a fifth of the size."""
        if len(features) != len(captions) or len(features) == 0:
            raise ValueError(f"{len(features)} feature rows but {len(captions)} caption lists")
        x = np.asarray(features, dtype=np.float64)
        mean = x.mean(axis=0)
        if dims is None or dims >= x.shape[1]:
            components = np.eye(x.shape[1])
        else:
            components = np.linalg.svd(x - mean, full_matrices=False)[2][:dims].T  # [F, dims]
        words = WordIds()
        ids = [[words(c) for c in cs] for cs in captions]
        cider = CiderD(ids)
        pool = ReferencePool(cider, [c for cs in ids for c in cs])
        projection = (mean.astype(np.float32), components.astype(np.float32))
        reduced = (x - mean) @ components
        self._setup(reduced, projection, [list(c) for c in captions], words, cider, pool)

    def _setup(
        self, reduced, projection, captions, words: WordIds, cider: CiderD, pool: ReferencePool
    ) -> None:
        # float16 on disk (half the size, same neighbours); float32 in memory (no conversion per request)
        self.mean, self.components = projection
        f = np.asarray(reduced).astype(np.float16).astype(np.float32)
        self.features = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        self.captions, self.words, self.cider, self.pool = captions, words, cider, pool
        counts = np.array([len(cs) for cs in captions], dtype=np.int64)
        self.first_caption = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.caption_count = counts

    @property
    def size(self) -> int:
        return len(self.features)

    # A memory image this similar to the query is the query itself (float16 rounding keeps a self-match ~0.9999).
    SAME_IMAGE_COSINE = 0.99
    _skip_same = False  # True in a leave_one_out() view

    def leave_one_out(self) -> ConsensusMemory:
        """A view of this memory that never counts the query photo itself among its neighbours (cosine >=
        SAME_IMAGE_COSINE): for captioning the memory's own training photos as if unseen (calibration fitting)."""
        view = copy.copy(self)
        view._skip_same = True
        return view

    def neighbours(self, features: np.ndarray, k: int) -> np.ndarray:
        """int [B, k]: the k memory images most similar (cosine) to each row of features [B, F]."""
        q = (features.astype(np.float32) - self.mean) @ self.components
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sims = (self.features @ q.T).T  # [B, N]; this way round BLAS reads the memory once (2x faster at B=4)
        if self._skip_same:
            sims = np.where(sims >= self.SAME_IMAGE_COSINE, -np.inf, sims)
        k = min(k, self.size)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)

    def consensus(
        self, features: np.ndarray, candidates: Sequence[Sequence[str]], k: int
    ) -> list[np.ndarray]:
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
        """Write the memory (features, captions, and the vectorised captions so that loading is fast)."""
        path = Path(path)
        counts = np.array([len(cs) for cs in self.captions], dtype=np.int32)
        text = "\n".join(c for cs in self.captions for c in cs)
        vocab = "\n".join(sorted(self.words.ids, key=self.words.ids.__getitem__))
        df = self.cider.df
        arrays: dict[str, np.ndarray] = {f"pool_{k}": v for k, v in self.pool.arrays().items()}
        arrays.update(
            features=self.features.astype(np.float16), mean=self.mean, components=self.components,
            caption_counts=counts, captions=np.frombuffer(text.encode(), np.uint8),
            words=np.frombuffer(vocab.encode(), np.uint8), df_keys=df.keys, df_counts=df.df,
            df_log_size=np.array(df.log_size),
        )  # fmt: skip
        with open(path, "wb") as f:
            np.savez_compressed(f, allow_pickle=False, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ConsensusMemory:
        """Read a memory written by ``save``; ValueError if its parts disagree."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        counts = arrays["caption_counts"].astype(np.int64)
        lines = bytes(arrays["captions"]).decode().split("\n")
        n_captions = int(counts.sum())
        if n_captions != len(lines) or len(counts) != len(arrays["features"]):
            raise ValueError(f"{path}: caption counts do not match the captions or the features")
        if len(arrays["pool_lengths"]) != n_captions:
            raise ValueError(f"{path}: the vectorised captions do not match the captions")
        words = WordIds()
        words.ids = {w: i + 1 for i, w in enumerate(bytes(arrays["words"]).decode().split("\n"))}
        df = DocumentFrequency.from_arrays(
            arrays["df_keys"], arrays["df_counts"], float(arrays["df_log_size"])
        )
        cider = CiderD(df=df)
        pool = ReferencePool.from_arrays(
            cider, {k[5:]: v for k, v in arrays.items() if k.startswith("pool_")}
        )
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self = cls.__new__(cls)
        captions = [lines[bounds[i] : bounds[i + 1]] for i in range(len(counts))]
        projection = (arrays["mean"].astype(np.float32), arrays["components"].astype(np.float32))
        self._setup(arrays["features"], projection, captions, words, cider, pool)
        return self


def build_bundle_consensus(
    bundle_path: str | Path | None,
    data_root: str | Path,
    features: str | Path | None = None,
    image_dir: str | Path | None = None,
    dims: int | None = 256,
    progress: bool = True,
) -> ConsensusMemory:
    """The consensus memory of a bundle: its encoder's features of the Flickr8k training photos and their captions
    (normalised as the metrics normalise them). features: a feature cache folder of the bundle's encoder over the
    sorted train+dev photos (as the training pipeline writes it); None: the encoder runs here (minutes)."""
    from captioner.data.flickr8k import load_flickr8k
    from captioner.data.text import normalize_caption
    from captioner.model.bundle import load_bundle
    from captioner.model.labelling import train_features

    bundle = load_bundle(bundle_path)
    dataset = load_flickr8k(data_root, image_dir)
    train = sorted(dataset.available("train"))
    pooled = train_features(bundle, dataset, train, features, progress)
    captions = [[normalize_caption(c) for c in dataset.captions[n]] for n in train]
    return ConsensusMemory(pooled, captions, dims)
