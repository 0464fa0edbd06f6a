"""Ensembles of decoders: the members' probabilities averaged per step, the same in NumPy and onnxruntime, stored
in a bundle as float16 members and loaded by ``captioner.load``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import captioner
from captioner.decode.options import DecodeOptions
from captioner.decode.search import search
from captioner.errors import BundleError
from captioner.model.bundle import MANIFEST_FILE, WEIGHTS_FILE, load_bundle, record_ensemble
from captioner.model.config import DecoderConfig
from captioner.model.ensemble import EnsembleDecoder
from captioner.model.onnx_step import OnnxDecoder
from captioner.model.step import NumpyDecoder, weight_shapes

CONFIG = DecoderConfig(vocab_size=23, feature_size=10, embed_dim=6, hidden_dim=7, dropout=0.0, max_length=8)
START, END = 1, 2


def random_decoder(config: DecoderConfig = CONFIG, seed: int = 0) -> NumpyDecoder:
    rng = np.random.default_rng(seed)
    return NumpyDecoder(
        config, {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in weight_shapes(config).items()}
    )


def features(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, CONFIG.feature_size)).astype(np.float32)


@pytest.fixture(scope="module")
def members():
    wider = DecoderConfig(**{**CONFIG.to_dict(), "hidden_dim": 11, "embed_dim": 4})
    return [random_decoder(seed=0), random_decoder(wider, seed=1), random_decoder(seed=2)]


def test_step_is_the_log_of_the_members_mean_probability(members):
    ensemble = EnsembleDecoder(members)
    tokens = np.array([0, 3, 5, 7])
    state, states = ensemble.initial_state(features(4)), [m.initial_state(features(4)) for m in members]
    for t in range(3):
        got, state = ensemble.step(tokens + t, state)
        steps = [m.step(tokens + t, s) for m, s in zip(members, states, strict=True)]
        states = [s for _, s in steps]
        want = np.log(np.mean([np.exp(lp.astype(np.float64)) for lp, _ in steps], axis=0))
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(
            np.exp(got.astype(np.float64)).sum(axis=1), 1.0, atol=1e-5
        )  # a distribution
        np.testing.assert_allclose(state[0], np.concatenate([s[0] for s in states], axis=1), atol=1e-6)
    assert np.abs(got - steps[0][0]).max() > 0.05  # the members really differ


def test_an_ensemble_of_one_decoder_twice_is_that_decoder(members):
    ensemble = EnsembleDecoder([members[0], members[0]])
    options = DecodeOptions(beam_size=3, max_length=8, n_best=3)
    single = search(members[0].step, members[0].initial_state(features(5)), options, START, END)
    double = search(ensemble.step, ensemble.initial_state(features(5)), options, START, END)
    assert [[h.tokens for h in hs] for hs in double] == [[h.tokens for h in hs] for hs in single]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnx_graph_runs_the_ensemble(members, precision):
    ensemble = EnsembleDecoder(members)
    onnx_decoder = OnnxDecoder(ensemble, threads=1, precision=precision)
    tokens = np.random.default_rng(3).integers(0, CONFIG.vocab_size, (4, 6))
    state_ref = ensemble.initial_state(features(6))
    state = onnx_decoder.initial_state(features(6))
    atol = 1e-5 if precision == "fp32" else 0.1  # int8: 8-bit activations, 7-bit weights
    for t in range(tokens.shape[0]):
        want, state_ref = ensemble.step(tokens[t], state_ref)
        got, state = onnx_decoder.step(tokens[t], state)
        np.testing.assert_allclose(got, want, atol=atol)
        for a, b in zip(state, state_ref, strict=True):
            np.testing.assert_allclose(a, b, atol=atol)
    values, ids, _ = onnx_decoder.step_topk(tokens[0], state, 4)
    np.testing.assert_array_equal(
        ids, np.argsort(-onnx_decoder.step(tokens[0], state)[0], axis=1, kind="stable")[:, :4]
    )


def test_int8_rows_do_not_depend_on_their_batch(members):
    """Micro-batching must not change captions: a row's result is the same alone or in any batch."""
    onnx_decoder = OnnxDecoder(EnsembleDecoder(members), threads=1, precision="int8")
    state = onnx_decoder.initial_state(features(5))
    tokens = np.array([4, 0, 9, 3, 22])
    batch, _ = onnx_decoder.step(tokens, state)
    for i in range(5):
        alone, _ = onnx_decoder.step(tokens[i : i + 1], tuple(s[i : i + 1] for s in state))
        np.testing.assert_allclose(alone[0], batch[i], rtol=0, atol=1e-6)


def test_members_must_share_vocabulary_and_encoder():
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleDecoder([random_decoder()])
    other = DecoderConfig(**{**CONFIG.to_dict(), "vocab_size": 30})
    with pytest.raises(ValueError, match="vocabulary"):
        EnsembleDecoder([random_decoder(), random_decoder(other)])


@pytest.fixture
def ensemble_bundle(tiny_bundle, tmp_path, tiny_encoder_onnx, tiny_vocabulary):
    from conftest_helpers import build_tiny_bundle

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    others = [
        build_tiny_bundle(tmp_path / f"seed{s}", tiny_encoder_onnx, tiny_vocabulary, seed=s) for s in (1, 2)
    ]
    record_ensemble(bundle, [o / WEIGHTS_FILE for o in others], seeds=[1, 2])
    return bundle, others


def test_bundle_members_are_float16_checksummed_and_averaged(ensemble_bundle, tiny_bundle, photo_files):
    import h5py

    bundle, others = ensemble_bundle
    loaded = load_bundle(bundle)
    assert loaded.members == ("weights/member1.weights.h5", "weights/member2.weights.h5")
    assert loaded.manifest["ensemble"]["seeds"] == [1, 2]
    with h5py.File(loaded.member_paths[0]) as f:
        assert f["layers/dense/vars/0"].dtype == np.float16
    assert loaded.version != load_bundle(tiny_bundle).version  # another model: another cache key

    engine = captioner.load(bundle, decoder_backend="numpy")
    assert isinstance(engine.decoder, EnsembleDecoder) and len(engine.decoder.members) == 3
    assert engine.info is not None and engine.info.decoders == 3 and engine.version == loaded.version
    # The members are the other bundles' decoders in float16: the same weights within float16's precision.
    member = engine.decoder.members[1]
    original = NumpyDecoder.from_h5(loaded.config, others[0] / WEIGHTS_FILE)
    np.testing.assert_allclose(member.w["logits/kernel"], original.w["logits/kernel"], rtol=1e-3, atol=1e-3)
    single = captioner.load(bundle, decoder_backend="numpy", ensemble=False)
    assert not isinstance(single.decoder, EnsembleDecoder)
    assert single.version == load_bundle(tiny_bundle).version and single.info.decoders == 1
    options = DecodeOptions(beam_size=3, max_length=8)
    for backend in ("onnx", "onnx-int8"):
        results = captioner.load(bundle, decoder_backend=backend).caption_files(photo_files, options)
        assert all(r.caption for r in results)


def test_a_tampered_or_unlisted_member_is_refused(ensemble_bundle):
    bundle, _ = ensemble_bundle
    member = bundle / "weights/member1.weights.h5"
    data = bytearray(member.read_bytes())
    data[-100] ^= 1
    member.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(bundle)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    del manifest["files"]["weights/member1.weights.h5"]
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="without a checksum"):
        load_bundle(bundle)


def test_record_ensemble_refuses_another_shape_and_can_remove_members(ensemble_bundle, tmp_path):
    bundle, _ = ensemble_bundle
    wrong = tmp_path / "wrong.weights.h5"
    import h5py

    with h5py.File(wrong, "w") as f:
        f["layers/dense/vars/0"] = np.zeros((3, 3), np.float32)
    with pytest.raises(BundleError):
        record_ensemble(bundle, [wrong])
    members = load_bundle(bundle).member_paths
    record_ensemble(bundle, members[::-1])  # its own members again, in another order
    loaded = load_bundle(bundle)
    assert loaded.members == ("weights/member1.weights.h5", "weights/member2.weights.h5")
    engine = captioner.load(bundle, decoder_backend="numpy")
    assert len(engine.decoder.members) == 3
    record_ensemble(bundle, [])
    loaded = load_bundle(bundle)
    assert loaded.members == () and "ensemble" not in loaded.manifest
    assert not (bundle / "weights/member1.weights.h5").exists()
