"""The onnxruntime decoder step: the same numbers as NumpyDecoder, top-k with the search's tie rule, int8 variant."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.decode.options import DecodeOptions
from captioner.decode.search import search
from captioner.model.config import DecoderConfig
from captioner.model.onnx_step import SINGLE_THREAD_ROWS, OnnxDecoder, build_step_graph
from captioner.model.step import NumpyDecoder, weight_shapes

CONFIG = DecoderConfig(vocab_size=23, feature_size=10, embed_dim=6, hidden_dim=7, dropout=0.0, max_length=8)
START, END = 1, 2


def random_decoder(config: DecoderConfig = CONFIG, scale: float = 0.5, seed: int = 0) -> NumpyDecoder:
    rng = np.random.default_rng(seed)
    shapes = weight_shapes(config)
    return NumpyDecoder(config, {k: rng.normal(0, scale, s).astype(np.float32) for k, s in shapes.items()})


@pytest.fixture(scope="module")
def decoders():
    reference = random_decoder()
    return reference, OnnxDecoder(reference, threads=1)


def features(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, CONFIG.feature_size)).astype(np.float32)


def test_steps_equal_the_numpy_decoder(decoders):
    reference, onnx_decoder = decoders
    state_ref = reference.initial_state(features(5))
    state = onnx_decoder.initial_state(features(5))
    tokens = np.random.default_rng(2).integers(0, CONFIG.vocab_size, (6, 5))
    for t in range(tokens.shape[0]):
        want, state_ref = reference.step(tokens[t], state_ref)
        got, state = onnx_decoder.step(tokens[t], state)
        assert got.dtype == np.float32 and got.shape == (5, CONFIG.vocab_size)
        np.testing.assert_allclose(got, want, atol=1e-5)
        for a, b in zip(state, state_ref, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.ptp(want, axis=0).max() > 0.1  # rows differ: a test on real signal, not on a constant


def test_topk_is_each_rows_best_in_order(decoders):
    reference, onnx_decoder = decoders
    state = reference.initial_state(features(4))
    tokens = np.array([0, 3, 5, 7])
    log_probs, _ = reference.step(tokens, state)
    values, ids, (h, c, v) = onnx_decoder.step_topk(tokens, state, 5)
    assert values.shape == ids.shape == (4, 5) and ids.dtype == np.int64
    order = np.argsort(-log_probs, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(values, np.take_along_axis(log_probs, order, axis=1), atol=1e-5)
    assert v is state[2]  # the image projection rides along unchanged
    # k above the vocabulary is capped, not an error
    assert onnx_decoder.step_topk(tokens, state, 1000)[0].shape == (4, CONFIG.vocab_size)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_step_with_topk_is_step_and_step_topk_from_one_run(precision):
    decoder = random_decoder()
    onnx_decoder = OnnxDecoder(decoder, threads=1, precision=precision)
    state = decoder.initial_state(features(4))
    tokens = np.array([0, 3, 5, 7])
    log_probs, values, ids, (h, c, v) = onnx_decoder.step_with_topk(tokens, state, 5)
    want_lp, (want_h, want_c, _) = onnx_decoder.step(tokens, state)
    want_values, want_ids, _ = onnx_decoder.step_topk(tokens, state, 5)
    # The same graph and inputs: bit for bit.
    np.testing.assert_array_equal(log_probs, want_lp)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(h, want_h)
    np.testing.assert_array_equal(c, want_c)
    assert v is state[2]
    assert onnx_decoder.step_with_topk(tokens, state, 10_000)[1].shape == (4, CONFIG.vocab_size)


def test_ties_rank_the_lower_token_id_first():
    # Zero output weights: every token has the same log-probability, so only the tie rule decides.
    decoder = random_decoder()
    decoder.w["logits/kernel"][:] = 0
    decoder.w["logits/bias"][:] = 0
    onnx_decoder = OnnxDecoder(decoder, threads=1)
    values, ids, _ = onnx_decoder.step_topk(np.array([0, 4]), decoder.initial_state(features(2)), 6)
    np.testing.assert_array_equal(ids, [list(range(6))] * 2)
    np.testing.assert_allclose(values, -np.log(CONFIG.vocab_size), atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        DecodeOptions(strategy="greedy", max_length=7),
        DecodeOptions(beam_size=3, max_length=7, length_penalty=0.7),
        DecodeOptions(beam_size=4, max_length=6, n_best=3, length_penalty=0.0),
    ],
    ids=["greedy", "beam3", "beam4-nbest3"],
)
def test_searches_give_the_same_captions_as_the_numpy_decoder(decoders, options):
    reference, onnx_decoder = decoders
    feats = features(9, seed=3)
    want = search(reference.step, reference.initial_state(feats), options, START, END)
    got = search(
        onnx_decoder.step,
        onnx_decoder.initial_state(feats),
        options,
        START,
        END,
        step_topk=onnx_decoder.step_topk,
    )
    assert [[h.tokens for h in hs] for hs in got] == [[h.tokens for h in hs] for hs in want]
    for hs_got, hs_want in zip(got, want, strict=True):
        np.testing.assert_allclose([h.score for h in hs_got], [h.score for h in hs_want], atol=1e-4)
    assert len({hs[0].tokens for hs in want}) > 1  # different images, different captions


def test_empty_batch(decoders):
    _, onnx_decoder = decoders
    state = onnx_decoder.initial_state(np.zeros((0, CONFIG.feature_size), np.float32))
    log_probs, _ = onnx_decoder.step(np.zeros(0, np.int64), state)
    values, ids, _ = onnx_decoder.step_topk(np.zeros(0, np.int64), state, 3)
    assert log_probs.shape == (0, CONFIG.vocab_size) and values.shape == ids.shape == (0, 3)


def test_int8_is_quantised_and_still_a_distribution():
    import onnx

    from captioner.model.onnx_step import WEIGHT_LEVELS, step_graph_arrays

    config = DecoderConfig(
        vocab_size=300, feature_size=10, embed_dim=32, hidden_dim=48, dropout=0.0, max_length=8
    )
    reference = random_decoder(config, scale=0.2)
    fp32 = OnnxDecoder(reference, threads=1)
    int8 = OnnxDecoder(reference, threads=1, precision="int8")
    state = reference.initial_state(np.random.default_rng(4).normal(0, 1, (16, 10)).astype(np.float32))
    tokens = np.arange(16) * 7
    lp8, _ = int8.step(tokens, state)
    lp32, _ = fp32.step(tokens, state)
    np.testing.assert_allclose(np.exp(lp8).sum(axis=1), 1.0, atol=1e-4)
    assert 0 < np.abs(lp8 - lp32).max() < 0.1  # quantised (not bit-equal), yet close
    assert (lp8.argmax(1) == lp32.argmax(1)).mean() >= 0.75
    arrays = step_graph_arrays(reference.graph_weights(), "int8")
    for name in ("recurrent_kernel", "proj_kernel", "logits_kernel"):
        q = arrays[f"{name}_q"]
        assert q.dtype == np.int8 and np.abs(q).max() == WEIGHT_LEVELS  # 7 bits: no u8 x s8 saturation
        np.testing.assert_allclose(q * arrays[f"{name}_scale"], reference.graph_weights()[name], atol=0.01)
    ops = {n.op_type for n in build_step_graph(arrays).graph.node}
    assert "MatMul" not in ops and "MatMulInteger" in ops
    onnx.checker.check_model(build_step_graph(arrays))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_rows_result_does_not_depend_on_the_rest_of_the_batch(precision):
    # Micro-batching puts unrelated requests in one batch: each row's numbers must be its own. int8 quantises
    # activations per row for this (per-tensor scales, onnxruntime's dynamic quantisation, fail this test).
    config = DecoderConfig(
        vocab_size=300, feature_size=10, embed_dim=32, hidden_dim=48, dropout=0.0, max_length=8
    )
    # threads=2: batches above SINGLE_THREAD_ROWS run on the 2-thread session, a row alone on the 1-thread one.
    decoder = OnnxDecoder(random_decoder(config, scale=0.2), threads=2, precision=precision)
    rows = SINGLE_THREAD_ROWS + 8
    feats = np.random.default_rng(6).normal(0, 1, (rows, 10)).astype(np.float32)
    feats[3] *= 40  # one row with much larger activations than the others
    state = decoder.initial_state(feats)
    tokens = np.arange(rows) * 9
    batched, (h, c, _) = decoder.step(tokens, state)
    for i in range(rows):
        alone, (h1, c1, _) = decoder.step(tokens[i : i + 1], tuple(a[i : i + 1] for a in state))
        if precision == "int8":  # integer products: exactly equal
            assert np.array_equal(alone[0], batched[i]) and np.array_equal(h1[0], h[i])
        else:  # float GEMMs may block differently for another row count
            np.testing.assert_allclose(alone[0], batched[i], atol=1e-5)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        OnnxDecoder(random_decoder(), precision="int4")


def test_graph_weights_must_be_complete():
    from captioner.model.onnx_step import step_graph_arrays

    weights = random_decoder().graph_weights()
    del weights["logits_bias"]
    with pytest.raises(ValueError, match="logits_bias"):
        step_graph_arrays(weights)
