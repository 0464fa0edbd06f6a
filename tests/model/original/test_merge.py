"""The original merge model read without Keras and run by our engine: the same captions as the original's
per-word Keras loop, refusal of other layer graphs, and no TensorFlow/Keras in the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import captioner
from captioner.decode.captioner import Captioner
from captioner.decode.options import DecodeOptions
from captioner.errors import BundleError
from captioner.model.backends import step_decoder
from captioner.model.original import load_original
from captioner.model.original.merge import build_merge_model, read_merge_model
from captioner.model.original.merge_step import OriginalStep
from original_artefacts import (
    CAPTIONS,
    FEATURES,
    MAX_LENGTH,
    VOCAB,
    KerasLoopStep,
    keras_tokenizer,
    tutorial_generate,
    write_original_artefacts,
)

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    return write_original_artefacts(tmp_path_factory.mktemp("original"))


@pytest.fixture(scope="module")
def original(artefacts):
    a = artefacts
    return load_original(a["model_path"], a["tokenizer_path"], a["weights_path"], feature_size=FEATURES)


def _engine(original, step) -> Captioner:
    return Captioner(None, step, original.vocabulary)  # type: ignore[arg-type]  # decode_features needs no encoder


def _ours(original, backend="numpy") -> OriginalStep:
    return OriginalStep(
        step_decoder(original.reference, backend, threads=1), original.reference, original.max_length
    )


def test_the_model_is_read_with_its_sizes(original, artefacts):
    assert (original.model.feature_size, original.max_length, original.model.vocab_size) == (
        FEATURES,
        MAX_LENGTH,
        VOCAB,
    )
    assert len(original.vocabulary) == VOCAB
    assert original.vocabulary.start_id == artefacts["tokenizer"].word_index["startseq"]
    model_weights = {w.path: w.numpy() for w in artefacts["model"].weights}
    np.testing.assert_array_equal(original.model.weights["out/kernel"], model_weights["dense_2/kernel"])


@pytest.mark.parametrize("backend", ["numpy", "onnx"])
def test_teacher_forced_distributions_equal_the_keras_model_past_max_length(original, artefacts, backend):
    """After each token: predict(pad_sequences(prefix, maxlen)) of the Keras model, also once the prefix is
    longer than the model's input (pad_sequences drops the oldest tokens)."""
    from keras.utils import pad_sequences

    step = _ours(original, backend)
    photo = np.random.default_rng(3).normal(0, 1, (1, FEATURES)).astype(np.float32)
    forced = [
        original.vocabulary.start_id,
        *np.random.default_rng(4).integers(1, VOCAB, MAX_LENGTH + 4).tolist(),
    ]
    state = step.initial_state(photo)
    for t, token in enumerate(forced):
        log_probs, state = step.step(np.array([token]), state)
        expected = artefacts["model"].predict(
            [photo, pad_sequences([forced[: t + 1]], maxlen=MAX_LENGTH)], verbose=0
        )
        np.testing.assert_allclose(np.exp(log_probs[0, 1:]), expected[0, 1:], atol=2e-5)
        assert np.exp(log_probs[0, 0]) < 1e-8  # padding is never a word


def test_the_tutorial_greedy_loop_gives_the_same_words(original, artefacts):
    photos = np.random.default_rng(2).normal(0, 1, (3, FEATURES)).astype(np.float32)
    steps = MAX_LENGTH + 3
    # The tutorial's loop has no repeated-n-gram rule: compare under the same rules.
    options = DecodeOptions(strategy="greedy", max_length=steps, length_penalty=0.0, no_repeat_ngram=0)
    ours = _engine(original, _ours(original)).decode_features(photos, options)
    for b, photo in enumerate(photos):
        ids, _ = tutorial_generate(artefacts["model"], artefacts["tokenizer"], photo[None], MAX_LENGTH, steps)
        words = [artefacts["tokenizer"].index_word[i] for i in ids]
        assert ours[b].caption == " ".join(w for w in words if w != "endseq")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "onnx"])
def test_captions_equal_the_keras_loop_oracle_on_120_images(tmp_path, backend):
    """The acceptance test: a random-weight original model, 120 feature vectors, greedy and beam: identical
    captions from our step (NumPy reference and its onnxruntime graph) and the original per-word Keras loop."""
    a = write_original_artefacts(tmp_path, weight_scale=0.5, seed=7)
    original = load_original(a["model_path"], a["tokenizer_path"], a["weights_path"], feature_size=FEATURES)
    features = np.random.default_rng(11).normal(0, 1, (120, FEATURES)).astype(np.float32)
    oracle = _engine(original, KerasLoopStep(a["model"]))
    ours = _engine(original, _ours(original, backend))
    for options in (
        DecodeOptions(strategy="greedy", max_length=MAX_LENGTH + 4, length_penalty=0.0, no_repeat_ngram=0),
        DecodeOptions(
            strategy="beam", beam_size=3, max_length=MAX_LENGTH + 4, length_penalty=0.0, no_repeat_ngram=0
        ),
    ):
        expected = [r.caption for r in oracle.decode_features(features, options)]
        assert [r.caption for r in ours.decode_features(features, options)] == expected
        assert len(set(expected)) > 5  # the images really get different captions


def test_state_rows_can_be_reordered_by_search(original):
    step = _ours(original, "onnx")
    photos = np.random.default_rng(5).normal(0, 1, (3, FEATURES)).astype(np.float32)
    state = step.initial_state(photos)
    for token in [original.vocabulary.start_id, *range(2, MAX_LENGTH + 2)]:  # past max_length: windows refill
        _, state = step.step(np.full(3, token), state)
    tokens = np.array([3, 4, 5])
    full, _ = step.step(tokens, state)
    idx = np.array([2, 2, 0, 1])
    part, _ = step.step(tokens[idx], tuple(np.take(x, idx, axis=0) for x in state))
    np.testing.assert_allclose(part, full[idx], atol=1e-6)
    values, ids, _ = step.step_topk(tokens, state, 2)
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :2])


def test_the_weights_file_is_applied(artefacts):
    a = artefacts
    own = read_merge_model(a["model_path"])
    given = read_merge_model(a["model_path"], a["weights_path"])
    assert not np.allclose(own.weights["out/kernel"], given.weights["out/kernel"])


# -- what is refused --


def _refused(path: Path, tokenizer_path: Path, match: str, **kwargs) -> None:
    with pytest.raises(BundleError, match=match):
        load_original(path, tokenizer_path, **kwargs)


SUPPORTED = r"supported: the tutorial's merge model"


def test_unknown_layer_graphs_are_refused_naming_the_supported_one(tmp_path, artefacts):
    layers, tok = keras.layers, artefacts["tokenizer_path"]
    inputs = keras.Input(shape=(FEATURES,))
    keras.Model(inputs, layers.Dense(VOCAB, activation="softmax")(inputs)).save(tmp_path / "one.keras")
    _refused(tmp_path / "one.keras", tok, f"has 1 inputs.*{SUPPORTED}")

    build_merge_model(keras, FEATURES, VOCAB, MAX_LENGTH, 8, output_activation=None).save(
        tmp_path / "logits.keras"
    )
    _refused(tmp_path / "logits.keras", tok, f"does not output a softmax.*{SUPPORTED}")

    f_in, ids_in = keras.Input(shape=(FEATURES,)), keras.Input(shape=(MAX_LENGTH,))
    gru = layers.GRU(8)(layers.Embedding(VOCAB, 8, mask_zero=True)(ids_in))
    merged = layers.concatenate([layers.Dense(8, activation="relu")(f_in), gru])
    out = layers.Dense(VOCAB, activation="softmax")(layers.Dense(8, activation="relu")(merged))
    keras.Model([f_in, ids_in], out).save(tmp_path / "gru.keras")
    _refused(tmp_path / "gru.keras", tok, SUPPORTED)


def test_mismatched_artefacts_are_refused(tmp_path, artefacts):
    a = artefacts
    bigger = keras_tokenizer([*CAPTIONS, "startseq a red kite flies endseq"])
    (tmp_path / "bigger.pkl").write_bytes(__import__("pickle").dumps(bigger))
    _refused(a["model_path"], tmp_path / "bigger.pkl", "different training runs")
    _refused(a["model_path"], a["tokenizer_path"], "expects 16-d image features but the encoder gives 2048-d",
             feature_size=2048)  # fmt: skip
    build_merge_model(keras, FEATURES, VOCAB, MAX_LENGTH, 12).save_weights(tmp_path / "other.weights.h5")
    _refused(
        a["model_path"],
        a["tokenizer_path"],
        "do not fit the model",
        weights_path=tmp_path / "other.weights.h5",
    )
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    _refused(tmp_path / "model.h5", a["tokenizer_path"], "expected a Keras v3 '.keras' model file")
    _refused(tmp_path / "missing.keras", a["tokenizer_path"], "model file not found")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    _refused(tmp_path / "junk.keras", a["tokenizer_path"], "cannot load")


# -- captioner.load --


def test_load_finds_original_artefacts_in_a_folder_or_by_keyword(artefacts, tmp_path):
    from conftest_helpers import make_photo

    a = artefacts
    make_photo().save(tmp_path / "photo.jpg")
    by_folder = captioner.load(a["model_path"].parent, decoder_backend="onnx", threads=1)
    by_file = captioner.load(a["model_path"], decoder_backend="onnx", threads=1)
    by_keyword = captioner.load(
        model=a["model_path"], tokenizer=a["tokenizer_path"], weights=a["weights_path"],
        encoder=a["encoder_path"], decoder_backend="onnx", threads=1,
    )  # fmt: skip
    info = by_folder.model_info
    assert info.format == "original" and info.encoder == "inception_v3" and info.max_length == MAX_LENGTH
    captions = {
        c.caption_files([tmp_path / "photo.jpg"])[0].caption for c in (by_folder, by_file, by_keyword)
    }
    assert len(captions) == 1 and set(captions.pop().split()) <= {w for c in CAPTIONS for w in c.split()}
    with pytest.raises(BundleError, match="has no encoder file"):
        captioner.load(model=a["model_path"], tokenizer=a["tokenizer_path"])


def test_loading_and_captioning_imports_neither_tensorflow_nor_keras(artefacts, tmp_path):
    from conftest_helpers import make_photo

    make_photo().save(tmp_path / "photo.jpg")
    code = (
        "import sys, captioner\n"
        f"c = captioner.load({str(artefacts['model_path'].parent)!r}, threads=1)\n"
        f"assert c.caption_files([{str(tmp_path / 'photo.jpg')!r}])[0].caption\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'tf_keras'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(captioner.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
