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


class _Photos:
    """A dataset of the session's photo files, two references each."""

    def __init__(self, paths):
        self.paths = {p.name: p for p in paths}

    def available(self, split: str) -> list[str]:
        return sorted(self.paths)

    def references(self, split: str) -> dict[str, list[str]]:
        return {n: ["a dog runs on the grass", "a cat sits on a mat"] for n in self.paths}

    def image_path(self, name: str):
        return self.paths[name]


def test_fit_and_report_on_a_real_captioner_leave_each_photo_out_of_the_consensus(tiny_bundle, photo_files):
    import captioner
    from captioner.decode.options import DecodeOptions
    from captioner.evaluation.confidence import confidence_report, fit_calibration
    from captioner.model.consensus import ConsensusMemory

    engine = captioner.load(tiny_bundle)
    features = engine.encoder.run([engine.load(p) for p in photo_files]).features
    memory = ConsensusMemory(
        features, [["a dog runs"], ["a cat sits"], ["two dogs play"], ["a man rides"]], dims=2
    )
    engine.consensus = memory
    seen = []
    rerank = ConsensusMemory.rerank

    def spy(self, *args, **kwargs):
        seen.append(self._skip_same)
        return rerank(self, *args, **kwargs)

    dataset, options = _Photos(photo_files), DecodeOptions(beam_size=2, max_length=6)
    try:
        ConsensusMemory.rerank = spy
        fitted = fit_calibration(engine, dataset, "train", options, limit=4)
        assert seen and all(seen)  # fitting never reranks a photo with its own captions
        seen.clear()
        report = confidence_report(engine, dataset, "dev", options, calibration=fitted["calibration"])
        assert seen and not any(seen)  # evaluation and serving use the whole memory
    finally:
        ConsensusMemory.rerank = rerank
    assert engine.consensus is memory
    assert report["model"]["decoders"] == 1 and report["model"]["version"] == engine.version
    assert report["num_images"] == 4 and 0.0 <= report["mean_confidence"] <= 1.0
    assert fitted["record"]["images"] == 4
