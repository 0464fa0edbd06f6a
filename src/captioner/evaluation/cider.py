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
    """CIDEr-D of captions against their references, with document frequencies fixed at construction."""

    def __init__(self, corpus: Iterable[Sequence[Sequence[int]]], sigma: float = 6.0):
        self.df = DocumentFrequency(corpus)
        self.sigma = float(sigma)

    def __call__(self, hyps: Sequence[Sequence[int]], refs: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
        """float64 [len(hyps)]: CIDEr-D of hyps[i] against the reference set refs[i]."""
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} captions but {len(refs)} reference sets")
        if not hyps:
            return np.zeros(0)
        flat_refs = [r for rs in refs for r in rs]
        n_refs = np.array([len(rs) for rs in refs], dtype=np.int64)
        if (n_refs == 0).any():
            raise ValueError("every caption needs at least one reference")
        hv = _tfidf(hyps, self.df)
        rv = _tfidf(flat_refs, self.df)
        # One (caption, reference) pair per reference; ref_of_pair indexes flat_refs.
        hyp_of_pair = np.repeat(np.arange(len(hyps)), n_refs)
        ref_of_pair = np.arange(len(flat_refs))
        # Reference weights looked up by (reference, n-gram): dense n-gram ids, then one sorted composite code.
        all_keys, inverse = np.unique(np.concatenate([hv.key, rv.key]), return_inverse=True)
        h_kid, r_kid = inverse[: len(hv.key)], inverse[len(hv.key) :]
        K = len(all_keys)
        ref_code = rv.row * K + r_kid  # sorted: rows are sorted and keys sorted within a row
        ref_sort = np.argsort(ref_code, kind="stable")
        ref_code_sorted = ref_code[ref_sort]
        # Expand each caption n-gram to each of its caption's pairs.
        pairs_start = np.concatenate([[0], np.cumsum(n_refs)[:-1]])
        reps = n_refs[hv.row]
        entry = np.repeat(np.arange(len(hv.row)), reps)
        offset = np.arange(len(entry)) - np.repeat(np.cumsum(reps) - reps, reps)
        pair = pairs_start[hv.row[entry]] + offset
        code = ref_of_pair[pair] * K + h_kid[entry]
        pos = np.clip(np.searchsorted(ref_code_sorted, code), 0, len(ref_code_sorted) - 1)
        hit = ref_code_sorted[pos] == code
        w_ref = np.where(hit, rv.weight[ref_sort][pos], 0.0)
        w_hyp = hv.weight[entry]
        n_idx = hv.n[entry] - 1
        n_pairs = len(hyp_of_pair)
        dots = np.bincount(
            pair * MAX_N + n_idx, weights=np.minimum(w_hyp, w_ref) * w_ref, minlength=n_pairs * MAX_N
        ).reshape(n_pairs, MAX_N)
        norm_h = hv.norms[hyp_of_pair]
        norm_r = rv.norms[ref_of_pair]
        denom = norm_h * norm_r
        sims = np.divide(dots, denom, out=dots.copy(), where=denom != 0)
        delta = (hv.lengths[hyp_of_pair] - rv.lengths[ref_of_pair]).astype(np.float64)
        sims *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        per_pair = sims.mean(axis=1)
        return 10.0 * np.bincount(hyp_of_pair, weights=per_pair, minlength=len(hyps)) / n_refs


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
