import logging
import sys

import pytest

from captioner.evaluation import metrics
from captioner.evaluation.metrics import compute_metrics, score_captions

REFS = {
    "1.jpg": ["A dog runs across the grass .", "a brown dog is running on a lawn"],
    "2.jpg": ["Two children play in the water .", "kids splash in a swimming pool"],
    "3.jpg": ["A man rides a bicycle down the street .", "a cyclist on a city road"],
}
PERFECT = {key: refs[0] for key, refs in REFS.items()}
WRONG = {"1.jpg": "a man rides a bicycle", "2.jpg": "a dog runs on grass", "3.jpg": "children play in water"}


def test_perfect_hypotheses_score_one():
    scores = compute_metrics(REFS, PERFECT, meteor=False)
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    assert scores["BLEU-4"] == pytest.approx(1.0)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["CIDEr"] > 0


def test_wrong_hypotheses_score_lower():
    perfect = compute_metrics(REFS, PERFECT, meteor=False)
    wrong = compute_metrics(REFS, WRONG, meteor=False)
    for name in perfect:
        assert wrong[name] < perfect[name], name


def test_normalisation_ignores_case_and_punctuation():
    refs = {"a": ["a dog"], "b": ["a cat"]}
    assert compute_metrics(refs, {"a": "A Dog .", "b": "A CAT!"}, meteor=False) == compute_metrics(
        refs, {"a": "a dog", "b": "a cat"}, meteor=False
    )


def test_per_image_scores_follow_ids():
    scores = score_captions(REFS, PERFECT | {"2.jpg": "a red car"}, meteor=False)
    assert set(scores.per_image) == set(REFS)
    assert scores.per_image["1.jpg"]["BLEU-4"] == pytest.approx(1.0)
    assert scores.per_image["2.jpg"]["BLEU-4"] < 0.01


def test_empty_hypotheses_do_not_crash():
    scores = compute_metrics(REFS, {key: "" for key in REFS} | {"1.jpg": "..."}, meteor=False)
    assert scores["BLEU-4"] == pytest.approx(0.0, abs=1e-6)
    assert scores["CIDEr"] == 0.0


@pytest.mark.parametrize(
    ("refs", "hyps", "message"),
    [
        ({}, {}, "nothing to score"),
        ({"a": ["a dog"]}, {"b": "a dog"}, "same image ids"),
        ({"a": ["a dog"], "b": ["a cat"]}, {"a": "a dog"}, "same image ids"),
        ({"a": []}, {"a": "a dog"}, "no non-empty reference"),
        ({"a": ["...", ""]}, {"a": "a dog"}, "no non-empty reference"),
        ({"a": "a dog"}, {"a": "a dog"}, "list of captions"),
        ({"a": ["a dog"]}, {"a": None}, "must be a string"),
    ],
)
def test_invalid_inputs_raise(refs, hyps, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(refs, hyps, meteor=False)


def test_missing_java_omits_meteor_with_warning(monkeypatch, caplog):
    monkeypatch.setattr(metrics.shutil, "which", lambda _: None)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        scores = compute_metrics(REFS, PERFECT)
    assert "METEOR" not in scores and "BLEU-4" in scores
    assert "not on PATH" in caplog.text


def test_crashing_meteor_process_is_reported(monkeypatch, caplog):
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('no heap'); sys.exit(1)"]
    monkeypatch.setattr(metrics, "_meteor_command", lambda jar: crash)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        scores = compute_metrics(REFS, PERFECT)
    assert "METEOR" not in scores
    assert "failed" in caplog.text and "no heap" in caplog.text


def test_hung_meteor_process_is_killed(monkeypatch, caplog):
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(metrics, "_meteor_command", lambda jar: hang)
    monkeypatch.setattr(metrics, "METEOR_TIMEOUT_S", 0.5)
    monkeypatch.setattr(metrics, "METEOR_TIMEOUT_PER_IMAGE_S", 0.0)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        scores = compute_metrics(REFS, PERFECT)
    assert "METEOR" not in scores
    assert "did not answer" in caplog.text


def test_meteor_jar_is_installed():
    jar = metrics._meteor_jar()
    assert jar.is_file()
    assert (jar.parent / "data" / "paraphrase-en.gz").is_file()


@pytest.mark.slow  # the JVM loads a 60 MB paraphrase table: ~6 s
def test_meteor_scores_within_unit_interval():
    perfect = compute_metrics(REFS, PERFECT)
    wrong = compute_metrics(REFS, WRONG | {"3.jpg": ""})
    assert perfect["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= wrong["METEOR"] < perfect["METEOR"]
    assert list(perfect)[4] == "METEOR"
