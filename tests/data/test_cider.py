"""The vectorised CIDEr-D against pycocoevalcap's scorer (the oracle), on captions built here."""

from __future__ import annotations

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from captioner.data.cider import (
    CiderD,
    ReferencePool,
    WordIds,
    _score_pairs,
    _tfidf,
    cider_d_corpus,
    ngram_counts,
)

WORDS = [
    "a",
    "the",
    "dog",
    "cat",
    "man",
    "woman",
    "runs",
    "sits",
    "on",
    "in",
    "grass",
    "water",
    "red",
    "blue",
    "ball",
    "field",
]


def _sentence(rng: np.random.Generator, lo: int = 1, hi: int = 12) -> str:
    return " ".join(rng.choice(WORDS, size=rng.integers(lo, hi + 1)))


def _corpus(seed: int, images: int, refs: int = 5) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    return {f"img{i}": [_sentence(rng) for _ in range(refs)] for i in range(images)}


def test_corpus_cider_equals_pycocoevalcap_per_image():
    refs = _corpus(0, 40)
    rng = np.random.default_rng(1)
    hyps = {n: (rs[0] if i % 3 == 0 else _sentence(rng)) for i, (n, rs) in enumerate(refs.items())}
    hyps["img1"] = ""  # an empty caption scores 0, as in pycocoevalcap
    mean, per_image = cider_d_corpus(refs, hyps)
    expected_mean, expected = Cider().compute_score(refs, {n: [h] for n, h in hyps.items()})
    assert mean == pytest.approx(expected_mean, abs=1e-9)
    np.testing.assert_allclose([per_image[n] for n in refs], expected, atol=1e-9)
    assert per_image["img1"] == 0.0
    assert per_image["img0"] > np.median(expected)  # a caption equal to a reference scores high


def test_fixed_document_frequencies_equal_pycocoevalcap_with_the_same_frequencies():
    """The reward's form: df from a training corpus, captions scored against other images' references."""
    train = _corpus(2, 60)
    scored = _corpus(3, 15, refs=4)
    rng = np.random.default_rng(4)
    hyps = {n: _sentence(rng) for n in scored}
    words = WordIds()
    cider = CiderD([[words(r) for r in rs] for rs in train.values()])
    got = cider([words(hyps[n]) for n in scored], [[words(r) for r in scored[n]] for n in scored])

    oracle = CiderScorer(n=4, sigma=6.0)
    for n in scored:
        oracle += (hyps[n], scored[n])
    for rs in train.values():  # pycocoevalcap's df step, on the training corpus instead of the scored refs
        for ngram in {g for r in rs for g in CiderScorer(refs=[r], test=r).crefs[0][0]}:
            oracle.document_frequency[ngram] += 1
    # compute_cider takes log |D| from len(self.crefs): make that the training corpus's size.
    oracle.crefs = _SizedList(oracle.crefs, size=len(train))
    expected = oracle.compute_cider()  # compute_score would recompute df from the scored refs
    np.testing.assert_allclose(got, expected, atol=1e-9)


class _SizedList(list):
    def __init__(self, items, size: int):
        super().__init__(items)
        self.size = size

    def __len__(self) -> int:
        return self.size


def test_ngram_counts_counts_each_distinct_ngram_once_per_row():
    row, key, n, count = ngram_counts([[1, 2, 1, 2], [3]])
    per_row = [
        {(int(k), int(m)): c for r, k, m, c in zip(row, key, n, count, strict=True) if r == i} for i in (0, 1)
    ]
    # row 0: unigrams {1:2, 2:2}, bigrams {12:2, 21:1}, trigrams {121, 212}, one 4-gram
    assert sorted(per_row[0].values()) == [1, 1, 1, 1, 2, 2, 2]
    assert len(per_row[1]) == 1 and list(per_row[1].values()) == [1.0]


def test_rejects_mismatched_inputs():
    cider = CiderD([[[1, 2, 3]]])
    with pytest.raises(ValueError, match="2 captions but 1 reference sets"):
        cider([[1], [2]], [[[1]]])
    with pytest.raises(ValueError, match="at least one reference"):
        cider([[1]], [[]])
    assert cider([], []).shape == (0,)


def test_reference_pool_scores_equal_scoring_the_same_references_directly():
    train = _corpus(5, 30)
    words = WordIds()
    sets = [[words(r) for r in rs] for rs in train.values()]
    cider = CiderD(sets)
    pool_captions = [c for rs in sets for c in rs]
    pool = ReferencePool(cider, pool_captions)
    rng = np.random.default_rng(6)
    hyps = [words(_sentence(rng)) for _ in range(12)] + [[]]
    picks = [rng.choice(len(pool_captions), size=rng.integers(1, 12), replace=False) for _ in hyps]
    got = pool(hyps, picks)
    expected = cider(hyps, [[pool_captions[j] for j in p] for p in picks])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[-1] == 0.0
    # Looking n-grams up among the picked references only finds what a search of the whole pool finds.
    n_refs = np.array([len(p) for p in picks])
    whole = _score_pairs(
        _tfidf(hyps, cider.df), pool.vectors, pool.keys, pool.code, n_refs, np.concatenate(picks), cider.sigma
    )
    np.testing.assert_array_equal(got, whole)
    unseen = words("zebra giraffe")  # n-grams the pool never saw score 0, not an error
    assert pool([unseen], [np.arange(5)])[0] == 0.0
