"""The Captioner engine: encoder + step decoder + vocabulary -> frozen CaptionResults."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from captioner import loading
from captioner.decode.captioner import Candidate, Captioner, CaptionResult
from captioner.decode.options import DecodeOptions
from captioner.errors import ImageError

GREEDY = DecodeOptions(strategy="greedy", max_length=12, length_penalty=0.0)
BEAM = DecodeOptions(strategy="beam", beam_size=4, n_best=3, max_length=12, length_penalty=0.0)


@pytest.fixture(scope="module")
def captioner(tiny_bundle) -> Captioner:
    return loading.load(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def images(photo_files) -> list[Image.Image]:
    from captioner.encoders.images import load_image

    return [load_image(p) for p in photo_files]


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_one_result_per_image(captioner, images, photo_files, options):
    results = captioner.caption_images(images, options)
    assert len(results) == len(images)
    for r in results:
        assert isinstance(r, CaptionResult)
        # The best candidate, unless it is empty and a non-empty one exists.
        assert r.caption == next((c.caption for c in r.candidates if c.caption), r.candidates[0].caption)
        assert 1 <= len(r.candidates) <= options.n_best
        assert len(r.caption.split()) <= options.max_length
        assert r.timings_ms.keys() == {"encoder", "decoder"} and min(r.timings_ms.values()) >= 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.caption = "changed"  # type: ignore[misc]
    from_files = captioner.caption_files(photo_files, options, batch_size=3)  # batches of 3 + 1
    assert [[c.caption for c in r.candidates] for r in from_files] == [
        [c.caption for c in r.candidates] for r in results
    ]
    for f, r in zip(from_files, results, strict=True):  # encoder batch shapes differ: last-bit float noise
        np.testing.assert_allclose(
            [c.score for c in f.candidates], [c.score for c in r.candidates], atol=1e-4
        )
    assert captioner.caption_images([], options) == [] and captioner.caption_files([], options) == []


def test_n_best_candidates_are_distinct_and_sorted(captioner, images):
    random = np.random.default_rng(0).normal(0, 1, (5, captioner.encoder.feature_size)).astype(np.float32)
    photos = captioner.encoder.encode(images)
    for r in captioner.decode_features(np.concatenate([random, photos]), BEAM):
        assert 1 <= len(r.candidates) <= 3
        assert len({c.caption for c in r.candidates}) == len(r.candidates)
        scores = [c.score for c in r.candidates]
        assert scores == sorted(scores, reverse=True)
        assert all(c.log_prob <= 0 for c in r.candidates)
        assert r.to_dict()["candidates"] == [dataclasses.asdict(c) for c in r.candidates]


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_batched_equals_one_at_a_time(captioner, images, options):
    features = np.random.default_rng(1).normal(0, 1, (4, captioner.encoder.feature_size)).astype(np.float32)
    batched = captioner.decode_features(features, options)
    single = [captioner.decode_features(features[i : i + 1], options)[0] for i in range(len(features))]
    assert [r.caption for r in batched] == [r.caption for r in single]
    assert len({r.caption for r in batched}) > 1  # the rows really differ
    for b, s in zip(batched, single, strict=True):
        np.testing.assert_allclose(
            [c.score for c in b.candidates], [c.score for c in s.candidates], atol=1e-4
        )
    # The same through the encoder.
    batched = captioner.caption_images(images, options)
    single = [captioner.caption_images([im], options)[0] for im in images]
    assert [r.caption for r in batched] == [r.caption for r in single]


def test_model_info(captioner, tiny_bundle):
    from captioner.model.bundle import load_bundle

    info = captioner.model_info
    assert info.version == load_bundle(tiny_bundle).version == captioner.version
    assert info.encoder == "efficientnet_lite0" and info.format == "bundle"
    assert info.vocab_size == len(captioner.vocabulary) and info.metrics == {"BLEU-4": 0.0}
    assert info.to_dict()["version"] == info.version
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.version = "changed"  # type: ignore[misc]


def test_unreadable_file_is_an_image_error(captioner, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageError):
        captioner.caption_files([bad])


class PathDecoder:
    """Uniform log-probs except that ``path[t]`` is clearly best at step t; the state is the step count."""

    def __init__(self, vocab_size: int, path: list[int]):
        self.vocab_size, self.path = vocab_size, path

    def initial_state(self, features):
        return (np.zeros(len(features), np.int64),)

    def step(self, tokens, state):
        (t,) = state
        logits = np.zeros((len(tokens), self.vocab_size), np.float32)
        logits[np.arange(len(tokens)), [self.path[min(i, len(self.path) - 1)] for i in t]] = 5.0
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return log_probs.astype(np.float32), (t + 1,)


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_decode_features_with_a_fake_step_decoder(tiny_vocabulary, options):
    text = "a cat sits on a mat"
    path = [*tiny_vocabulary.encode(text), tiny_vocabulary.end_id]
    engine = Captioner(
        encoder=None, decoder=PathDecoder(len(tiny_vocabulary), path), vocabulary=tiny_vocabulary
    )
    results = engine.decode_features(np.zeros((2, 7), np.float32), options)
    assert [r.caption for r in results] == [text, text]
    best = results[0].candidates[0]
    assert isinstance(best, Candidate)
    # 7 terms (6 words + end), each log(e^5 / (e^5 + V - 1)).
    expected = 7 * (5.0 - np.log(np.exp(5.0) + len(tiny_vocabulary) - 1))
    assert best.log_prob == pytest.approx(expected, rel=1e-5)
    assert best.score == pytest.approx(expected, rel=1e-5)  # length_penalty 0


def test_candidates_that_read_the_same_are_merged(tiny_vocabulary):
    """<unk> is dropped from the text: "a <unk> dog" and "a dog" are one candidate, the better scored."""
    v = tiny_vocabulary
    a, dog = v.encode("a dog")

    class UnkDecoder(PathDecoder):
        def step(self, tokens, state):
            log_probs, state = super().step(tokens, state)
            log_probs[:, v.unk_id] = log_probs[:, self.path[0]] - 0.5  # unk: a close second at every step
            return log_probs, state

    engine = Captioner(None, UnkDecoder(len(v), [a, dog, v.end_id]), v)
    (result,) = engine.decode_features(np.zeros((1, 3), np.float32), DecodeOptions(beam_size=5, n_best=5))
    texts = [c.caption for c in result.candidates]
    assert texts[0] == "a dog"
    assert len(texts) == len(set(texts))


def test_caption_each_fails_only_the_bad_items_and_captions_the_rest_together(
    captioner, photo_files, tmp_path
):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    sources = [photo_files[0], broken, photo_files[1], tmp_path / "missing.jpg"]
    batches = []
    real = captioner.caption_images
    captioner.caption_images = lambda imgs, opts: batches.append(len(imgs)) or real(imgs, opts)  # type: ignore[method-assign]
    try:
        outcomes = captioner.caption_each(sources, GREEDY)
    finally:
        del captioner.caption_images
    assert batches == [2]  # the two good images, one batch
    assert isinstance(outcomes[1], ImageError) and isinstance(outcomes[3], ImageError)
    expected = captioner.caption_images(
        [captioner.load(photo_files[0]), captioner.load(photo_files[1])], GREEDY
    )
    assert [outcomes[0].caption, outcomes[2].caption] == [r.caption for r in expected]
    assert captioner.caption_each([], GREEDY) == []


def test_with_encoder_and_with_decoder_swap_one_part_and_share_the_rest(captioner, images):
    from captioner.encoders.runtime import OnnxEncoder
    from captioner.model.backends import step_decoder

    reference = captioner.decoder.numpy  # the NumpyDecoder under the ONNX step
    other = captioner.with_decoder(step_decoder(reference, "onnx-int8")).with_encoder(
        OnnxEncoder(captioner.encoder.path, threads=1)
    )
    assert other.decoder is not captioner.decoder and other.encoder is not captioner.encoder
    assert captioner.decoder.numpy is reference and captioner.encoder.path == other.encoder.path  # unchanged
    for part in ("vocabulary", "info", "labels", "consensus", "calibration", "max_pixels"):
        assert getattr(other, part) is getattr(captioner, part)
    # A new step of the same weights and backend, a new session of the same encoder file: the same captions.
    assert [r.caption for r in other.caption_images(images, GREEDY)] == [
        r.caption for r in captioner.caption_images(images, GREEDY)
    ]
