"""CIDEr-D, vectorised with NumPy: the reward of self-critical training and a fast stand-in for pycocoevalcap.

pycocoevalcap's ``Cider`` scores one caption at a time in Python dicts (~1 ms per caption with 5 references):
fine for an evaluation, too slow for a reward computed for every sampled caption of every training batch. This
module computes the same quantity in array operations over all (caption, reference) pairs at once:

    CIDEr-D(c, R) = 10 / |R| * sum_{r in R} mean_{n=1..4} g(c, r) * sum_k min(c_nk, r_nk) * r_nk / (|c_n| |r_n|)
    c_nk = tf(n-gram k in c) * (log |D| - log max(1, df_k)),   g = exp(-(len c - len r)^2 / (2 sigma^2))

with document frequencies df over a fixed corpus of reference sets D (for the reward: the training captions,
computed once; pycocoevalcap computes them from the references of the images being scored, which
``cider_d_corpus`` reproduces). Lengths follow pycocoevalcap exactly (it counts bigrams, i.e. words - 1), so
``cider_d_corpus`` equals pycocoevalcap's ``Cider().compute_score`` (tests check it to 1e-9).

Captions are sequences of integer word ids (``WordIds`` maps text to ids); ids must be < 2**15 so that an n-gram
of up to 4 words packs into one int64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

MAX_N = 4
_BITS = 15  # bits per word id in a packed n-gram (4 x 15 + 3 bits for n < 2**63)


class WordIds:
    """Word -> integer id, growing as new words are seen (ids start at 1; 0 is never used)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, text: str) -> list[int]:
        out = []
        for word in text.split():
            i = self.ids.get(word)
            if i is None:
                i = self.ids[word] = len(self.ids) + 1
                if i >= 1 << _BITS:
                    raise ValueError(f"more than {(1 << _BITS) - 1} distinct words: CIDEr-D ids overflow")
            out.append(i)
        return out

    def lookup(self, text: str) -> list[int]:
        """Ids of the words of text without adding any (unknown words get 0, which matches no n-gram of the
        known ones): safe to call from several threads."""
        return [self.ids.get(word, 0) for word in text.split()]


def ngram_counts(seqs: Sequence[Sequence[int]], n_max: int = MAX_N) -> tuple[np.ndarray, ...]:
    """Every distinct n-gram (n = 1..n_max) of each sequence with its count.

    Returns (row int64 [M], key int64 [M], n int64 [M], count float64 [M]), sorted by (row, key); key packs the
    n-gram's word ids and n, so equal keys mean equal n-grams.
    """
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    width = int(lengths.max(initial=0))
    if width == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty.astype(np.float64)
    grid = np.full((len(seqs), width + n_max), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        grid[i, : len(s)] = s
    if grid.max() >= 1 << _BITS:
        raise ValueError(f"word ids must be < {1 << _BITS} for CIDEr-D")
    rows, keys, ns = [], [], []
    for n in range(1, n_max + 1):
        windows = np.stack([grid[:, j : j + width] for j in range(n)], axis=-1)  # [S, width, n]
        valid = (windows >= 0).all(axis=-1)
        packed = np.zeros(windows.shape[:2], dtype=np.int64) | (n << (_BITS * MAX_N))
        for j in range(n):
            packed |= np.where(windows[..., j] >= 0, windows[..., j], 0) << (_BITS * (n - 1 - j))
        r, _ = np.nonzero(valid)
        rows.append(r)
        keys.append(packed[valid])
        ns.append(np.full(len(r), n, dtype=np.int64))
    row, key, n_arr = np.concatenate(rows), np.concatenate(keys), np.concatenate(ns)
    order = np.lexsort((key, row))
    row, key, n_arr = row[order], key[order], n_arr[order]
    first = np.ones(len(row), dtype=bool)
    first[1:] = (row[1:] != row[:-1]) | (key[1:] != key[:-1])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(row))).astype(np.float64)
    return row[starts], key[starts], n_arr[starts], counts


class DocumentFrequency:
    """n-gram document frequencies over a corpus of reference sets (one set per image)."""

    keys: np.ndarray
    df: np.ndarray
    log_size: float

    @classmethod
    def from_arrays(cls, keys: np.ndarray, df: np.ndarray, log_size: float) -> DocumentFrequency:
        """Rebuild from the attributes ``keys``, ``df`` and ``log_size`` of one built before."""
        self = cls.__new__(cls)
        self.keys, self.df, self.log_size = keys.astype(np.int64), df.astype(np.int64), float(log_size)
        return self

    def __init__(self, corpus: Iterable[Sequence[Sequence[int]]]):
        sets = list(corpus)
        flat = [ref for refs in sets for ref in refs]
        owner = np.repeat(np.arange(len(sets)), [len(refs) for refs in sets])
        row, key, _, _ = ngram_counts(flat)
        pairs = np.unique(np.stack([owner[row], key], axis=1), axis=0)  # an n-gram counts once per image
        self.keys, self.df = np.unique(pairs[:, 1], return_counts=True)
        self.log_size = float(np.log(max(len(sets), 1)))

    def idf(self, keys: np.ndarray) -> np.ndarray:
        """log |D| - log max(1, df) for each key (unseen n-grams: df 0 -> log |D|)."""
        pos = np.clip(np.searchsorted(self.keys, keys), 0, max(len(self.keys) - 1, 0))
        found = (self.keys[pos] == keys) if len(self.keys) else np.zeros(len(keys), dtype=bool)
        df = np.where(found, self.df[pos] if len(self.keys) else 0, 0)
        return self.log_size - np.log(np.maximum(df, 1.0))


class CiderD:
    """CIDEr-D of captions against their references, with document frequencies fixed at construction
    (``corpus``: one reference set per image; or ``df`` computed before)."""

    def __init__(
        self,
        corpus: Iterable[Sequence[Sequence[int]]] = (),
        sigma: float = 6.0,
        df: DocumentFrequency | None = None,
    ):
        self.df = df if df is not None else DocumentFrequency(corpus)
        self.sigma = float(sigma)

    def __call__(self, hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
        """float64 [len(hyps)]: CIDEr-D of hyps[i] against the reference set refs[i]."""
        flat_refs = [r for rs in refs for r in rs]
        ends = np.cumsum([len(rs) for rs in refs], dtype=np.int64)
        pool = ReferencePool(self, flat_refs)
        return pool(hyps, [np.arange(end - len(rs), end) for end, rs in zip(ends, refs, strict=True)])


class _Vectors:
    """tf-idf weights of a set of sequences: sparse entries (row, key, n, weight), per-row norms [S, 4]
    and lengths [S] (bigram counts, as pycocoevalcap)."""

    def __init__(self, row, key, n, weight, norms, lengths):
        self.row, self.key, self.n, self.weight, self.norms, self.lengths = (
            row,
            key,
            n,
            weight,
            norms,
            lengths,
        )


def _tfidf(seqs: Sequence[Sequence[int]], df: DocumentFrequency) -> _Vectors:
    row, key, n, count = ngram_counts(seqs)
    weight = count * df.idf(key)
    norms = np.sqrt(
        np.bincount(row * MAX_N + n - 1, weights=weight**2, minlength=len(seqs) * MAX_N).reshape(-1, MAX_N)
    )
    lengths = np.maximum(np.array([len(s) for s in seqs], dtype=np.int64) - 1, 0)
    return _Vectors(row, key, n, weight, norms, lengths)


def cider_d_corpus(refs: dict[str, list[str]], hyps: dict[str, str]) -> tuple[float, dict[str, float]]:
    """pycocoevalcap's CIDEr: document frequencies from the scored images' own references.

    refs: image -> reference captions (tokenised text, words separated by spaces); hyps: image -> caption.
    Returns (mean, per image).
    """
    names = list(refs)
    words = WordIds()
    ref_ids = [[words(r) for r in refs[n]] for n in names]
    scores = CiderD(ref_ids)([words(hyps[n]) for n in names], ref_ids)
    return float(scores.mean()) if len(scores) else 0.0, dict(zip(names, scores.tolist(), strict=True))


class ReferencePool:
    """A fixed set of reference captions, vectorised once, to score many captions against subsets of it.

    ``CiderD.__call__`` vectorises its references on every call; a reranker that compares a few captions with
    the captions of a few of thousands of training images would redo that work per request. Scores equal
    ``CiderD.__call__`` on the same references (tested).
    """

    def __init__(self, cider: CiderD, captions: Sequence[Sequence[int]]):
        self.cider = cider
        self._index(_tfidf(captions, cider.df))

    def _index(self, rv: _Vectors) -> None:
        self.vectors = rv
        self.keys = np.unique(rv.key)  # dense n-gram ids of the pool: positions in this array
        kid = np.searchsorted(self.keys, rv.key)
        self.code = rv.row * len(self.keys) + kid  # sorted: rows ascending, keys ascending within a row
        self.size = len(rv.lengths)
        # Where each caption's entries begin in code (and the end): a search looks only at the references in use.
        self.row_start = np.searchsorted(self.code, np.arange(self.size + 1) * len(self.keys))

    def arrays(self) -> dict[str, np.ndarray]:
        """The vectorised pool, for ``from_arrays`` (saving it skips the vectorising when loading)."""
        v = self.vectors
        return {
            "row": v.row,
            "key": v.key,
            "n": v.n,
            "weight": v.weight,
            "norms": v.norms,
            "lengths": v.lengths,
        }

    @classmethod
    def from_arrays(cls, cider: CiderD, arrays: dict[str, np.ndarray]) -> ReferencePool:
        self = cls.__new__(cls)
        self.cider = cider
        a = arrays
        self._index(_Vectors(a["row"], a["key"], a["n"], a["weight"], a["norms"], a["lengths"]))
        return self

    def __call__(self, hyps: Sequence[Sequence[int]], refs: Sequence[np.ndarray]) -> np.ndarray:
        """float64 [len(hyps)]: CIDEr-D of hyps[i] against the pool captions whose indices are refs[i]."""
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} captions but {len(refs)} reference sets")
        if not hyps:
            return np.zeros(0)
        n_refs = np.array([len(r) for r in refs], dtype=np.int64)
        if (n_refs == 0).any():
            raise ValueError("every caption needs at least one reference")
        ref_of_pair = np.concatenate([np.asarray(r, dtype=np.int64) for r in refs])
        hv = _tfidf(hyps, self.cider.df)
        return _score_pairs(
            hv, self.vectors, self.keys, self.code, n_refs, ref_of_pair, self.cider.sigma, self.row_start
        )


def _score_pairs(hv, rv, keys, ref_code, n_refs, ref_of_pair, sigma, row_start=None) -> np.ndarray:
    """CIDEr-D of each caption of hv against its n_refs[i] references ref_of_pair[...] (rows of rv).

    keys: sorted unique n-gram keys of rv; ref_code: rv.row * len(keys) + dense id, sorted ascending.
    row_start: int [rows + 1], where each row's entries begin in ref_code: the n-grams are then looked up among
    the referenced rows' entries only (the same matches, in a far shorter array than a pool of thousands).
    """
    K = len(keys)
    pos = np.clip(np.searchsorted(keys, hv.key), 0, max(K - 1, 0))
    h_known = keys[pos] == hv.key if K else np.zeros(len(hv.key), bool)
    n_hyps = len(n_refs)
    hyp_of_pair = np.repeat(np.arange(n_hyps), n_refs)
    pairs_start = np.concatenate([[0], np.cumsum(n_refs)[:-1]])
    reps = n_refs[hv.row]
    entry = np.repeat(np.arange(len(hv.row)), reps)
    offset = np.arange(len(entry)) - np.repeat(np.cumsum(reps) - reps, reps)
    pair = pairs_start[hv.row[entry]] + offset
    code = ref_of_pair[pair] * K + pos[entry]
    if row_start is not None and len(ref_code):
        rows = np.unique(ref_of_pair)  # ascending, so their entries in row order stay sorted
        begin, count = row_start[rows], row_start[rows + 1] - row_start[rows]
        first = np.cumsum(count) - count  # where each row's entries begin in ``local``
        local = np.repeat(begin - first, count) + np.arange(count.sum())  # their indices into ref_code
        if len(local):
            at = local[np.clip(np.searchsorted(ref_code[local], code), 0, len(local) - 1)]
        else:
            at = np.zeros(len(code), np.int64)
    else:
        at = np.clip(np.searchsorted(ref_code, code), 0, max(len(ref_code) - 1, 0))
    hit = h_known[entry] & (ref_code[at] == code) if len(ref_code) else np.zeros(len(code), bool)
    w_ref = np.where(hit, rv.weight[at] if len(ref_code) else 0.0, 0.0)
    w_hyp = hv.weight[entry]
    n_pairs = len(hyp_of_pair)
    dots = np.bincount(
        pair * MAX_N + hv.n[entry] - 1, weights=np.minimum(w_hyp, w_ref) * w_ref, minlength=n_pairs * MAX_N
    ).reshape(n_pairs, MAX_N)
    denom = hv.norms[hyp_of_pair] * rv.norms[ref_of_pair]
    sims = np.divide(dots, denom, out=np.zeros_like(dots), where=denom != 0)
    delta = (hv.lengths[hyp_of_pair] - rv.lengths[ref_of_pair]).astype(np.float64)
    sims *= np.exp(-(delta**2) / (2 * sigma**2))[:, None]
    return 10.0 * np.bincount(hyp_of_pair, weights=sims.mean(axis=1), minlength=n_hyps) / n_refs
