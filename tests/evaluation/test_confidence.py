"""The confidence evaluation's statistics: Spearman with ties, reliability bins, human leave-one-out CIDEr."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.evaluation.confidence import human_cider, ranks, reliability_table, spearman


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200)
    b = a + rng.normal(size=200)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-9)
    assert list(ranks([3, 1, 1, 2])) == [4.0, 1.5, 1.5, 3.0]
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_reliability_table_bins_and_counts():
    rows = reliability_table([0.05, 0.15, 0.17, 0.95, 1.0], [0.0, 1.0, 3.0, 2.0, 4.0], threshold=1.5)
    assert [r["bin"] for r in rows] == [[0.0, 0.1], [0.1, 0.2], [0.9, 1.0]]
    assert [r["count"] for r in rows] == [1, 2, 2]
    assert rows[1]["mean_cider"] == 2.0 and rows[1]["share_good"] == 0.5 and rows[2]["share_good"] == 1.0


def test_human_cider_scores_each_reference_against_the_others():
    refs = {
        "a": ["a dog runs on the grass", "a dog runs on grass", "a brown dog runs on the grass"],
        "b": ["a man rides a bike", "a person rides a bicycle", "a man on a bike"],
        "c": ["two children play in the snow", "kids play in snow", "two kids in the snow"],
    }
    scores = human_cider(refs)
    assert len(scores) == 9 and all(s >= 0 for s in scores)
