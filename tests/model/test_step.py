"""The NumPy step decoder implements exactly the Keras decoder's equations on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.errors import BundleError
from captioner.model.config import DecoderConfig
from captioner.model.step import NumpyDecoder

CONFIG = DecoderConfig(vocab_size=13, feature_size=10, embed_dim=6, hidden_dim=7, dropout=0.3, max_length=8)


@pytest.fixture(scope="module")
def keras_decoder(tmp_path_factory):
    """(model, path of its .weights.h5) with random weights of scale 0.3, so every nonlinearity is exercised."""
    import keras

    from captioner.model.decoder import build_decoder

    keras.utils.set_random_seed(0)
    model = build_decoder(CONFIG)
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    path = tmp_path_factory.mktemp("step") / "decoder.weights.h5"
    model.save_weights(path)
    return model, path


def keras_log_probs(model, features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    import keras

    logits = keras.ops.convert_to_numpy(model((features, tokens), training=False)).astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def step_log_probs(decoder: NumpyDecoder, features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    state = decoder.initial_state(features)
    out = []
    for t in range(tokens.shape[1]):
        log_probs, state = decoder.step(tokens[:, t], state)
        assert log_probs.dtype == np.float32 and log_probs.shape == (len(features), CONFIG.vocab_size)
        out.append(log_probs)
    return np.stack(out, axis=1)


def test_step_by_step_equals_teacher_forcing(keras_decoder):
    model, path = keras_decoder
    decoder = NumpyDecoder.from_h5(CONFIG, path)
    assert decoder.vocab_size == CONFIG.vocab_size
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (5, CONFIG.feature_size)).astype(np.float32)
    tokens = rng.integers(0, CONFIG.vocab_size, (5, 9)).astype(np.int64)
    expected = keras_log_probs(model, features, tokens)
    got = step_log_probs(decoder, features, tokens)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The weights are not degenerate: the distributions differ across rows and steps.
    assert np.abs(expected[0] - expected[1]).max() > 0.1
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, atol=1e-5)


def test_state_rows_can_be_reordered(keras_decoder):
    """Beam search reorders state rows with np.take: each row must be independent of the others."""
    _, path = keras_decoder
    decoder = NumpyDecoder.from_h5(CONFIG, path)
    rng = np.random.default_rng(2)
    features = rng.normal(0, 1, (3, CONFIG.feature_size)).astype(np.float32)
    state = decoder.initial_state(features)
    assert [s.shape for s in state] == [(3, 7), (3, 7), (3, 6)]
    tokens = np.array([1, 4, 5])
    lp, state = decoder.step(tokens, state)
    order = np.array([2, 0, 0, 1])
    lp2, _ = decoder.step(np.array([3, 3, 3, 3]), tuple(np.take(s, order, axis=0) for s in state))
    lp_ref, _ = decoder.step(np.array([3, 3, 3]), state)
    np.testing.assert_allclose(lp2, lp_ref[order], atol=1e-6)


def test_weights_from_a_live_model_equal_weights_from_the_file(keras_decoder):
    from captioner.model.training import numpy_decoder_from_model

    model, path = keras_decoder
    from_file, from_model = NumpyDecoder.from_h5(CONFIG, path), numpy_decoder_from_model(model, CONFIG)
    assert from_file.w.keys() == from_model.w.keys()
    for name in from_file.w:
        np.testing.assert_array_equal(from_model.w[name], from_file.w[name], err_msg=name)


def test_wrong_shapes_are_bundle_errors(keras_decoder, tmp_path):
    _, path = keras_decoder
    bigger = DecoderConfig(**dict(CONFIG.to_dict(), vocab_size=CONFIG.vocab_size + 1))
    with pytest.raises(BundleError, match="embedding.*shape"):
        NumpyDecoder.from_h5(bigger, path)
    wider = DecoderConfig(**dict(CONFIG.to_dict(), hidden_dim=8))
    with pytest.raises(BundleError, match="weights and config disagree"):
        NumpyDecoder.from_h5(wider, path)
    weights = dict(NumpyDecoder.from_h5(CONFIG, path).w)
    del weights["logits/bias"]
    with pytest.raises(BundleError, match="logits/bias.*missing"):
        NumpyDecoder(CONFIG, weights)
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(BundleError, match="not a weights file"):
        NumpyDecoder.from_h5(CONFIG, junk)
    with pytest.raises(BundleError):
        NumpyDecoder.from_h5(CONFIG, tmp_path / "missing.weights.h5")
