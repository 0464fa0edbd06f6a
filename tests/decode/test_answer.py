"""Confidence, tags and answer options on the Captioner (tiny random-weight bundle; no trained model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from captioner.decode.answer import AnswerOptions, present
from captioner.decode.captioner import Candidate, Captioner, CaptionResult
from captioner.decode.confidence import Calibration, caption_confidence
from captioner.decode.neutral import neutralize
from captioner.decode.options import DecodeOptions
from captioner.encoders.imagenet import MAX_TAGS_TOP_K, Tag
from captioner.errors import OptionsError
from captioner.loading import load


@pytest.fixture(scope="module")
def captioner(tiny_bundle) -> Captioner:
    return load(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def images(photo_files) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in photo_files]


def test_confidence_is_the_geometric_mean_token_probability():
    assert caption_confidence(0.0, 5) == 1.0
    assert caption_confidence(5 * math.log(0.5), 5) == pytest.approx(0.5)
    assert caption_confidence(-3.0, 0) == 0.0
    # Monotone in the mean token log-probability, whatever the length.
    values = [caption_confidence(mean * n, n) for mean, n in [(-3, 4), (-2, 9), (-1, 2), (-0.5, 12)]]
    assert values == sorted(values) and all(0 <= v <= 1 for v in values)


def test_calibration_is_monotone_and_bounded():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.1, 0.7, 500)
    good = (rng.uniform(size=500) < raw).astype(float)  # better raw -> more often good
    cal = Calibration.fit(raw, good)
    grid = np.linspace(0, 1, 101)
    mapped = [cal(x) for x in grid]
    assert all(0 <= y <= 1 for y in mapped) and mapped == sorted(mapped)
    assert cal(0.65) > cal(0.15)
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError):
        Calibration((0.2, 0.1), (0.0, 1.0))


def test_captions_carry_confidence_and_tags_from_one_encoder_run(captioner, images, monkeypatch):
    calls = []
    run = captioner.encoder.run
    monkeypatch.setattr(captioner.encoder, "run", lambda ims: calls.append(len(ims)) or run(ims))
    monkeypatch.setattr(captioner.encoder, "encode", lambda ims: pytest.fail("a second encoder pass"))
    results = captioner.caption_images(images, DecodeOptions(beam_size=3, n_best=3))
    assert calls == [len(images)]
    for r in results:
        assert 0.0 <= r.confidence <= 1.0
        assert r.confidence == r.candidates[0].confidence or r.caption != r.candidates[0].caption
        for c in r.candidates:
            assert 0.0 <= c.confidence <= 1.0
        assert r.tags is not None and len(r.tags) == MAX_TAGS_TOP_K
        probs = [t.probability for t in r.tags]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5


def test_greedy_confidence_is_its_token_probabilities(captioner, images):
    r = captioner.caption_images(images[:1], DecodeOptions(strategy="greedy"))[0]
    c = r.candidates[0]
    n = len(c.caption.split())
    # The caption's words plus the end token, or only the words when cut at max_length.
    assert r.confidence in (
        pytest.approx(math.exp(c.log_prob / (n + 1))),
        pytest.approx(math.exp(c.log_prob / max(n, 1))),
    )


def test_an_encoder_without_the_head_gives_no_tags(tiny_bundle, tmp_path, images):
    from captioner.encoders.export import export_encoder
    from captioner.encoders.runtime import OnnxEncoder
    from captioner.model.bundle import load_bundle
    from captioner.model.step import NumpyDecoder

    bundle = load_bundle(tiny_bundle)
    headless = export_encoder("efficientnet_lite0", tmp_path / "e.onnx", weights=None, with_class_probs=False)
    captioner = Captioner(
        OnnxEncoder(headless, threads=1),
        NumpyDecoder.from_h5(bundle.config, bundle.weights_path),
        bundle.vocabulary,
    )
    result = captioner.caption_images(images[:2])[0]
    assert result.tags is None and result.caption
    assert present(result).tags is None and result.to_dict()["tags"] is None


def _result(caption: str, *others: str) -> CaptionResult:
    tags = tuple(Tag(f"class{i}", p, i) for i, p in enumerate([0.5, 0.2, 0.1, 0.04, 0.03]))
    cands = tuple(Candidate(c, -1.0 - i, -0.5 - i, 0.4) for i, c in enumerate((caption, *others)))
    return CaptionResult(caption, cands, {"encoder": 1.0}, 0.4, tags)


def test_present_cuts_tags_and_rewrites_wording():
    r = _result("a man in a red shirt", "a woman in a red shirt", "a dog runs")
    shown = present(r, AnswerOptions(tags_top_k=3, tags_min_prob=0.15))
    assert [t.label for t in shown.tags] == ["class0", "class1"]
    assert shown.caption == r.caption and shown.candidates == r.candidates
    assert present(r, AnswerOptions(tags_top_k=0)).tags == ()
    neutral = present(r, AnswerOptions(gender_neutral=True))
    assert neutral.caption == "a person in a red shirt"
    # The two captions read the same once neutral: one is kept, the better one.
    assert [c.caption for c in neutral.candidates] == ["a person in a red shirt", "a dog runs"]
    assert neutral.candidates[0].log_prob == -1.0 and neutral.confidence == r.confidence
    assert CaptionResult.from_dict(r.to_dict()) == r


@pytest.mark.parametrize("bad", [{"tags_top_k": -1}, {"tags_top_k": 21}, {"tags_min_prob": 1.5}])
def test_answer_options_are_bounded(bad):
    with pytest.raises(OptionsError):
        AnswerOptions(**bad)


def test_neutral_answer_equals_neutralize(captioner, images):
    result = captioner.caption_images(images[:2], DecodeOptions())[0]
    assert present(result, AnswerOptions(gender_neutral=True)).caption == neutralize(result.caption)


def test_teacher_forcing_reproduces_the_search_log_prob(captioner, images):
    from captioner.decode.scoring import sequence_log_probs
    from captioner.decode.search import search

    decoder, vocab = captioner.decoder, captioner.vocabulary
    features = captioner.encoder.run(images).features
    options = DecodeOptions(strategy="greedy", max_length=40)
    hyps = [
        h[0]
        for h in search(decoder.step, decoder.initial_state(features), options, vocab.start_id, vocab.end_id)
    ]
    scored = sequence_log_probs(
        decoder.step, decoder.initial_state(features), [h.tokens for h in hyps], vocab.start_id, vocab.end_id
    )
    for h, (log_prob, n) in zip(hyps, scored, strict=True):
        if h.finished:
            assert log_prob == pytest.approx(h.log_prob, abs=1e-4) and n == len(h.tokens) + 1


def test_sequence_log_probs_with_a_fake_step():
    from captioner.decode.scoring import sequence_log_probs

    table = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]))

    def step(tokens, state):  # token 0 -> row 0 of the table, anything else -> row 1
        return table[np.minimum(tokens, 1)], state

    state = (np.zeros((2, 1)),)
    (lp_a, n_a), (lp_b, n_b) = sequence_log_probs(step, state, [[3], []], start_id=0, end_id=2)
    assert n_a == 2 and lp_a == pytest.approx(math.log(0.4) + math.log(0.25))
    assert n_b == 1 and lp_b == pytest.approx(math.log(0.3))
