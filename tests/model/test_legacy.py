"""The original tutorial's artefacts (tokenizer.pkl, caption_model.keras, .weights.h5), loaded without running code.

Malicious pickles are built by hand and must be refused before anything runs. The model tests build a tiny merge
model of exactly the tutorial's architecture and check the step decoder against the tutorial's own greedy loop.
"""

from __future__ import annotations

import collections
import copyreg
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import captioner
from captioner.errors import BundleError
from captioner.model.legacy import LegacyStepDecoder, LegacyVocabulary, load_legacy, safe_load_tokenizer

CAPTIONS = [
    "startseq a dog runs on the grass endseq",
    "startseq a black dog jumps endseq",
    "startseq a child runs on the beach endseq",
]
FEATURES, UNITS, MAX_LENGTH = 16, 8, 8
VOCAB = 13  # the 12 distinct words of CAPTIONS + padding id 0


# -- building artefacts the way the original did --


class _Stub:
    """Stands in for a class we do not want to import (or that no longer exists) when writing test pickles."""


def _pickle_as(state: dict, module: str, name: str, protocol: int = 2) -> bytes:
    """A pickle of an object with attribute dict ``state`` whose class is recorded as ``module.name``."""
    stub = _Stub()
    stub.__dict__.update(state)
    data = pickle.dumps(stub, protocol=protocol)
    ref = f"c{_Stub.__module__}\n{_Stub.__qualname__}\n".encode()  # protocols 0-2 name classes by GLOBAL
    assert data.count(ref) == 1
    return data.replace(ref, f"c{module}\n{name}\n".encode())


def _tokenizer_state(captions: list[str] = CAPTIONS) -> dict:
    """A fitted Keras Tokenizer's __dict__ (what pickle stores), built without Keras."""
    counts: dict[str, int] = {}
    for caption in captions:
        for word in caption.split():
            counts[word] = counts.get(word, 0) + 1
    ordered = sorted(counts, key=lambda w: -counts[w])  # stable, like Tokenizer.fit_on_texts
    word_index = {w: i for i, w in enumerate(ordered, start=1)}
    return {
        "word_counts": counts,
        "filters": '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n',
        "split": " ",
        "lower": True,
        "num_words": None,
        "document_count": len(captions),
        "char_level": False,
        "oov_token": None,
        "word_index": word_index,
        "index_word": {i: w for w, i in word_index.items()},
        "analyzer": None,
    }


@pytest.fixture(scope="module")
def legacy_keras():
    return pytest.importorskip("keras")


def _keras_tokenizer(keras, captions=CAPTIONS, **kwargs):
    from keras.src.legacy.preprocessing.text import Tokenizer  # Keras 3 still ships the original class here

    tokenizer = Tokenizer(**kwargs)
    tokenizer.fit_on_texts(captions)
    return tokenizer


@pytest.fixture(scope="module")
def legacy_tokenizer(legacy_keras):
    return _keras_tokenizer(legacy_keras)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- reading tokenizers --


@pytest.mark.parametrize(
    "module",
    [
        "keras.preprocessing.text",
        "keras_preprocessing.text",
        "tensorflow.keras.preprocessing.text",
        "tensorflow.python.keras.preprocessing.text",
        "keras.src.preprocessing.text",
    ],
)
def test_tokenizer_pickled_under_any_keras_module_path_loads(tmp_path, module):
    state = _tokenizer_state()
    vocab = safe_load_tokenizer(_write(tmp_path / "tokenizer.pkl", _pickle_as(state, module, "Tokenizer")))

    assert isinstance(vocab, LegacyVocabulary)
    assert (vocab.start_word, vocab.end_word) == ("startseq", "endseq")
    assert vocab.start_id == state["word_index"]["startseq"] and vocab.end_id == state["word_index"]["endseq"]
    assert vocab.pad_id == 0 and len(vocab) == VOCAB
    assert dict(vocab.word_index) == state["word_index"]


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_real_keras_tokenizer_pickle_loads(tmp_path, legacy_tokenizer, protocol):
    path = _write(tmp_path / "tokenizer.pkl", pickle.dumps(legacy_tokenizer, protocol=protocol))
    vocab = safe_load_tokenizer(path)

    assert dict(vocab.word_index) == legacy_tokenizer.word_index
    assert len(vocab) == len(legacy_tokenizer.word_index) + 1
    for text in ["A dog runs on the grass!", "a BLACK cat jumps, on the beach.", "unknown words only"]:
        assert vocab.encode(text) == legacy_tokenizer.texts_to_sequences([text])[0]


def test_tokenizer_json_export_loads_the_same(tmp_path, legacy_tokenizer):
    pkl = safe_load_tokenizer(_write(tmp_path / "tokenizer.pkl", pickle.dumps(legacy_tokenizer)))
    js = safe_load_tokenizer(_write(tmp_path / "tokenizer.json", legacy_tokenizer.to_json().encode()))
    assert js == pkl


@pytest.mark.parametrize(
    "kwargs", [{"num_words": 6}, {"oov_token": "<unk>"}, {"num_words": 7, "oov_token": "<unk>"}]
)
def test_encode_matches_texts_to_sequences_with_num_words_and_oov(tmp_path, legacy_keras, kwargs):
    captions = ["startseq a a a dog dog endseq", "startseq a dog runs endseq", *CAPTIONS]
    tokenizer = _keras_tokenizer(legacy_keras, captions, **kwargs)
    vocab = safe_load_tokenizer(_write(tmp_path / "tokenizer.pkl", pickle.dumps(tokenizer)))

    assert len(vocab) == (kwargs.get("num_words") or len(tokenizer.word_index) + 1)
    for text in ["a black dog runs on the grass", "zebra a dog"]:
        assert vocab.encode(text) == tokenizer.texts_to_sequences([text])[0]


def test_decode_skips_pad_and_start_and_stops_at_end(tmp_path):
    vocab = safe_load_tokenizer(
        _write(tmp_path / "t.pkl", _pickle_as(_tokenizer_state(), "keras_preprocessing.text", "Tokenizer"))
    )
    ids = [
        0,
        0,
        vocab.start_id,
        *vocab.encode("a black dog jumps"),
        vocab.end_id,
        *vocab.encode("on the beach"),
    ]
    assert vocab.decode(ids) == "a black dog jumps"
    assert vocab.decode(np.array(vocab.encode("a child runs"))) == "a child runs"
    with pytest.raises(ValueError, match="out of range"):
        vocab.decode([VOCAB])


def test_start_end_words_in_angle_brackets_are_found(tmp_path):
    state = _tokenizer_state([c.replace("startseq", "<start>").replace("endseq", "<end>") for c in CAPTIONS])
    vocab = safe_load_tokenizer(
        _write(tmp_path / "t.pkl", _pickle_as(state, "keras.preprocessing.text", "Tokenizer"))
    )
    assert (vocab.start_word, vocab.end_word) == ("<start>", "<end>")


def test_tokenizer_without_start_end_words_is_refused(tmp_path):
    state = _tokenizer_state(["a dog runs", "a cat sits"])
    path = _write(tmp_path / "t.pkl", _pickle_as(state, "keras.preprocessing.text", "Tokenizer"))
    with pytest.raises(BundleError, match="no start/end words"):
        safe_load_tokenizer(path)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (pickle.dumps({"word_index": {"startseq": 1, "endseq": 2}}), "not a Keras Tokenizer"),
        (pickle.dumps(["startseq", "endseq"]), "not a Keras Tokenizer"),
        (pickle.dumps(_tokenizer_state())[:-20], "not a readable tokenizer pickle"),
        (b"\x80\x02P0\n.", "not a readable tokenizer pickle"),  # a persistent id
        (b'{"class_name": "Sequential", "config": {}}', "not a Tokenizer.to_json"),
        (b"{not json", "not valid"),
        (b"", "not a readable tokenizer pickle"),
    ],
)
def test_files_that_are_not_tokenizers_are_refused(tmp_path, data, match):
    with pytest.raises(BundleError, match=match):
        safe_load_tokenizer(_write(tmp_path / "tokenizer.pkl", data))


def test_missing_tokenizer_file_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        safe_load_tokenizer(tmp_path / "nope.pkl")


def test_reading_a_tokenizer_imports_neither_keras_nor_tensorflow(tmp_path):
    path = _write(tmp_path / "t.pkl", _pickle_as(_tokenizer_state(), "keras.preprocessing.text", "Tokenizer"))
    code = (
        "import sys; from captioner.model.legacy import safe_load_tokenizer; "
        f"v = safe_load_tokenizer({str(path)!r}); assert len(v) == {VOCAB}; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')]; assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(captioner.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# -- malicious pickles: refused, and the side effect never happens --


class _Reduce:
    """Pickles as ``func(*args)``: what an attacker puts in a pickle."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, bytes]:
    touch = f"touch {marker}"
    evil_state = {**_tokenizer_state(), "analyzer": _Reduce(os.system, touch)}
    return {
        "os.system": pickle.dumps(_Reduce(os.system, touch)),
        "builtins.eval": pickle.dumps(_Reduce(eval, f"__import__('os').system({touch!r})")),
        "builtins.exec": pickle.dumps(_Reduce(exec, f"import os; os.system({touch!r})")),
        "subprocess.call": pickle.dumps(_Reduce(subprocess.call, ["touch", str(marker)])),
        "subprocess.Popen": pickle.dumps(_Reduce(subprocess.Popen, ["touch", str(marker)])),
        "posix.system protocol 0": f"cposix\nsystem\n(S'{touch}'\ntR.".encode(),
        "INST opcode": f"(S'{touch}'\nios\nsystem\n.".encode(),
        "builtins.__import__": b"cbuiltins\n__import__\n(S'os'\ntR.",
        "builtins.getattr": b"cbuiltins\ngetattr\n(cbuiltins\nint\nS'__subclasses__'\ntR.",
        "nested in a Tokenizer": _pickle_as(evil_state, "keras.preprocessing.text", "Tokenizer"),
        "other name in a Keras module": _pickle_as({}, "keras.preprocessing.text", "text_to_word_sequence"),
    }


PAYLOAD_NAMES = list(_payloads(Path("x")))


def test_the_payloads_are_live(tmp_path):
    """Control: the os.system payload really runs under plain pickle, so the refusals below mean something."""
    marker = tmp_path / "pwned"
    pickle.loads(_payloads(marker)["os.system"])
    assert marker.exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_malicious_pickle_is_refused_without_side_effects(tmp_path, name):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "tokenizer.pkl", _payloads(marker)[name])
    with pytest.raises(
        BundleError, match=r"refusing to unpickle .*: tokenizer\.pkl may only contain a Keras Tokenizer"
    ):
        safe_load_tokenizer(path)
    assert not marker.exists()


def test_copyreg_extension_codes_are_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    module, name = os.system.__module__, os.system.__name__
    copyreg.add_extension(module, name, 0xF0)
    try:
        data = pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=2)
        assert b"\x82\xf0" in data  # EXT1 0xF0 instead of a GLOBAL
        with pytest.raises(BundleError, match="refusing to unpickle"):
            safe_load_tokenizer(_write(tmp_path / "tokenizer.pkl", data))
    finally:
        copyreg.remove_extension(module, name, 0xF0)
    assert not marker.exists()


def _build_on_global(module: str, name: str, attribute: str = "most_common") -> bytes:
    """Protocol 2: name ``module.name``, then BUILD with a slot state ``{attribute: 'pwned'}`` on it, i.e. what
    ``setattr(module.name, attribute, 'pwned')`` looks like to an unpickler."""
    attr = attribute.encode()
    state = b"N}X" + len(attr).to_bytes(4, "little") + attr + b"X\x05\x00\x00\x00pwneds\x86"
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + state + b"b."


def test_a_build_on_a_class_is_live_under_plain_pickle():
    """Control, in a child process (it corrupts the process): plain pickle sets the class attribute."""
    code = (
        "import collections, pickle; "
        f"pickle.loads({_build_on_global('collections', 'Counter')!r}); "
        "assert collections.Counter.most_common == 'pwned'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("collections", "Counter"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("builtins", "object"),
        ("__builtin__", "long"),
        ("keras.preprocessing.text", "Tokenizer"),
    ],
)
def test_a_pickle_cannot_set_attributes_on_an_allowed_class(tmp_path, module, name):
    from captioner.model import legacy

    before = {cls: dict(vars(cls)) for cls in (*legacy._ALLOWED_GLOBALS.values(), legacy._PickledTokenizer)}
    path = _write(tmp_path / "tokenizer.pkl", _build_on_global(module, name))
    with pytest.raises(BundleError, match="sets attributes on a class"):
        safe_load_tokenizer(path)
    assert {cls: dict(vars(cls)) for cls in before} == before
    assert collections.Counter.most_common is not None and callable(collections.Counter.most_common)


# -- the model --


def _merge_model(
    keras, feature_size=FEATURES, vocab_size=VOCAB, max_length=MAX_LENGTH, units=UNITS, out="softmax"
):
    """The tutorial's merge architecture, with tiny sizes."""
    from captioner.model.legacy import build_merge_model

    return build_merge_model(keras, feature_size, vocab_size, max_length, units, output_activation=out)


@pytest.fixture(scope="module")
def legacy_artefacts(legacy_keras, legacy_tokenizer, tmp_path_factory):
    """caption_model.keras with random weights, then the weights changed and saved to .weights.h5 only."""
    keras = legacy_keras
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("legacy")
    model = _merge_model(keras)
    model.save(root / "caption_model.keras")
    for layer in model.layers:  # new weights, so a test can tell whether the .weights.h5 was applied
        layer.set_weights([w + np.random.default_rng(1).normal(0, 0.3, w.shape) for w in layer.get_weights()])
    out = model.layers[-1]
    kernel, bias = out.get_weights()
    bias[0] = -10.0  # a trained model never predicts padding (it is never a target)
    out.set_weights([kernel, bias])
    (root / "weights").mkdir()
    model.save_weights(root / "weights" / "caption_model.weights.h5")
    tokenizer_path = _write(root / "tokenizer.pkl", pickle.dumps(legacy_tokenizer))
    return {
        "model": model,
        "model_path": root / "caption_model.keras",
        "weights_path": root / "weights" / "caption_model.weights.h5",
        "tokenizer_path": tokenizer_path,
    }


@pytest.fixture(scope="module")
def legacy_loaded(legacy_artefacts):
    a = legacy_artefacts
    return load_legacy(
        a["model_path"], a["weights_path"], tokenizer_path=a["tokenizer_path"], feature_size=FEATURES
    )


def _tutorial_generate(model, tokenizer, photo, max_length, steps=None):
    """The original generation loop, verbatim but for recording the probability of each chosen word."""
    from keras.utils import pad_sequences

    in_text, ids, probs = "startseq", [], []
    for _ in range(steps or max_length):
        sequence = tokenizer.texts_to_sequences([in_text])[0]
        sequence = pad_sequences([sequence], maxlen=max_length)
        yhat = model.predict([photo, sequence], verbose=0)
        idx = int(np.argmax(yhat))
        word = tokenizer.index_word.get(idx)
        if word is None:
            break
        ids.append(idx)
        probs.append(yhat[0])
        in_text += " " + word
        if word == "endseq":
            break
    return ids, probs


def test_load_legacy_describes_the_artefacts(legacy_loaded, legacy_tokenizer):
    decoder, vocab, info = legacy_loaded
    assert isinstance(decoder, LegacyStepDecoder)
    assert decoder.vocab_size == len(vocab) == VOCAB
    assert (decoder.feature_size, decoder.max_length) == (FEATURES, MAX_LENGTH)
    assert vocab.start_id == legacy_tokenizer.word_index["startseq"]
    assert (
        info["vocab_size"] == VOCAB and info["max_length"] == MAX_LENGTH and info["feature_size"] == FEATURES
    )
    assert info["start_word"] == "startseq" and info["end_word"] == "endseq"


def test_step_decoder_reproduces_the_tutorial_greedy_loop(legacy_artefacts, legacy_loaded, legacy_tokenizer):
    decoder, vocab, _ = legacy_loaded
    photos = np.random.default_rng(2).normal(0, 1, (3, FEATURES)).astype(np.float32)
    steps = MAX_LENGTH + 3  # run past max_length so that the prefix must be truncated like pad_sequences does

    state = decoder.initial_state(photos)
    tokens = np.full(len(photos), vocab.start_id, np.int64)
    ours_ids, ours_log_probs = [], []
    for _ in range(steps):
        log_probs, state = decoder.step(tokens, state)
        assert log_probs.dtype == np.float32 and log_probs.shape == (len(photos), VOCAB)
        tokens = log_probs.argmax(axis=1)
        ours_ids.append(tokens)
        ours_log_probs.append(log_probs)

    for b, photo in enumerate(photos):
        ref_ids, ref_probs = _tutorial_generate(
            legacy_artefacts["model"], legacy_tokenizer, photo[None], MAX_LENGTH, steps=steps
        )
        assert ref_ids, "the tutorial loop produced nothing"
        assert [int(t[b]) for t in ours_ids[: len(ref_ids)]] == ref_ids
        for t, ref in enumerate(ref_probs):
            ours = np.exp(ours_log_probs[t][b])
            np.testing.assert_allclose(ours[1:], ref[1:], atol=1e-5)  # id 0 (padding) is masked on purpose
            assert ours[0] < 1e-8


def test_prefix_is_truncated_like_pad_sequences(legacy_artefacts, legacy_loaded):
    """Teacher-forced: after each token the distribution equals predict(pad_sequences(prefix)), past max_length."""
    from keras.utils import pad_sequences

    decoder, vocab, _ = legacy_loaded
    model = legacy_artefacts["model"]
    photo = np.random.default_rng(3).normal(0, 1, (1, FEATURES)).astype(np.float32)
    forced = [vocab.start_id, *np.random.default_rng(4).integers(1, VOCAB, MAX_LENGTH + 4).tolist()]
    state = decoder.initial_state(photo)
    for t, token in enumerate(forced):
        log_probs, state = decoder.step(np.array([token]), state)
        expected = model.predict([photo, pad_sequences([forced[: t + 1]], maxlen=MAX_LENGTH)], verbose=0)[0]
        np.testing.assert_allclose(np.exp(log_probs[0, 1:]), expected[1:], atol=1e-5)
    assert int(state[2][0]) == len(forced)


def test_state_rows_can_be_reordered_by_search(legacy_loaded):
    decoder, vocab, _ = legacy_loaded
    photos = np.random.default_rng(5).normal(0, 1, (3, FEATURES)).astype(np.float32)
    state = decoder.initial_state(photos)
    _, state = decoder.step(np.full(3, vocab.start_id), state)
    tokens = np.array([3, 4, 5])
    full, _ = decoder.step(tokens, state)

    idx = np.array([2, 2, 0, 1])
    reordered = tuple(np.take(a, idx, axis=0) for a in state)
    part, _ = decoder.step(tokens[idx], reordered)
    np.testing.assert_allclose(part, full[idx], atol=1e-6)

    empty, _ = decoder.step(np.zeros(0, np.int64), tuple(a[:0] for a in state))
    assert empty.shape == (0, VOCAB)


def test_weights_file_is_applied(legacy_artefacts, legacy_loaded):
    a = legacy_artefacts
    without, vocab, info = load_legacy(a["model_path"], tokenizer_path=a["tokenizer_path"])
    assert info["weights_path"] is None
    photo = np.ones((1, FEATURES), np.float32)
    start = np.array([vocab.start_id])
    with_weights = legacy_loaded[0].step(start, legacy_loaded[0].initial_state(photo))[0]
    assert not np.allclose(without.step(start, without.initial_state(photo))[0], with_weights, atol=1e-3)


# -- mismatched artefacts --


def test_tokenizer_of_another_size_is_refused(tmp_path, legacy_keras, legacy_artefacts):
    bigger = _keras_tokenizer(legacy_keras, [*CAPTIONS, "startseq a red kite flies endseq"])
    path = _write(tmp_path / "tokenizer.pkl", pickle.dumps(bigger))
    with pytest.raises(BundleError, match="different training runs"):
        load_legacy(legacy_artefacts["model_path"], tokenizer_path=path)


def test_feature_size_other_than_the_encoders_is_refused(legacy_artefacts):
    a = legacy_artefacts
    with pytest.raises(BundleError, match="expects 16-d image features but the encoder gives 2048-d"):
        load_legacy(a["model_path"], tokenizer_path=a["tokenizer_path"], feature_size=2048)


def test_weights_of_another_model_are_refused(tmp_path, legacy_keras, legacy_artefacts):
    other = _merge_model(legacy_keras, units=UNITS + 4)
    other.save_weights(tmp_path / "other.weights.h5")
    a = legacy_artefacts
    with pytest.raises(BundleError, match="do not fit the model"):
        load_legacy(a["model_path"], tmp_path / "other.weights.h5", tokenizer_path=a["tokenizer_path"])


def test_model_without_two_inputs_is_refused(tmp_path, legacy_keras, legacy_artefacts):
    keras = legacy_keras
    inputs = keras.Input(shape=(FEATURES,))
    keras.Model(inputs, keras.layers.Dense(VOCAB, activation="softmax")(inputs)).save(tmp_path / "one.keras")
    with pytest.raises(BundleError, match="has 1 inputs"):
        load_legacy(tmp_path / "one.keras", tokenizer_path=legacy_artefacts["tokenizer_path"])


def test_model_without_softmax_output_is_refused(tmp_path, legacy_keras, legacy_artefacts):
    _merge_model(legacy_keras, out=None).save(tmp_path / "logits.keras")
    with pytest.raises(BundleError, match="does not output a softmax"):
        load_legacy(tmp_path / "logits.keras", tokenizer_path=legacy_artefacts["tokenizer_path"])


def test_only_keras_v3_model_files_are_loaded(tmp_path, legacy_artefacts):
    tokenizer_path = legacy_artefacts["tokenizer_path"]
    with pytest.raises(BundleError, match="expected a Keras v3 '.keras' model file"):
        load_legacy(_write(tmp_path / "model.h5", b"\x89HDF"), tokenizer_path=tokenizer_path)
    with pytest.raises(BundleError, match="model file not found"):
        load_legacy(tmp_path / "missing.keras", tokenizer_path=tokenizer_path)
    with pytest.raises(BundleError, match="cannot load"):
        load_legacy(_write(tmp_path / "junk.keras", b"not a zip"), tokenizer_path=tokenizer_path)


def test_json_tokenizer_works_with_the_model(tmp_path, legacy_tokenizer, legacy_artefacts):
    path = _write(tmp_path / "tokenizer.json", json.dumps(json.loads(legacy_tokenizer.to_json())).encode())
    _, vocab, _ = load_legacy(legacy_artefacts["model_path"], tokenizer_path=path)
    assert len(vocab) == VOCAB
