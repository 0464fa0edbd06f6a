"""The original design's tokenizer.pkl, read without running code and without Keras.

Malicious pickles are built by hand and must be refused before anything runs (and before anything changes).
"""

from __future__ import annotations

import collections
import copyreg
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import captioner
from captioner.errors import BundleError
from captioner.model.original.tokenizer import OriginalVocabulary, safe_load_tokenizer

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
def keras_module():
    return pytest.importorskip("keras")


def _keras_tokenizer(keras, captions=CAPTIONS, **kwargs):
    from keras.src.legacy.preprocessing.text import Tokenizer  # Keras 3 still ships the original class here

    tokenizer = Tokenizer(**kwargs)
    tokenizer.fit_on_texts(captions)
    return tokenizer


@pytest.fixture(scope="module")
def tutorial_tokenizer(keras_module):
    return _keras_tokenizer(keras_module)


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

    assert isinstance(vocab, OriginalVocabulary)
    assert (vocab.start_word, vocab.end_word) == ("startseq", "endseq")
    assert vocab.start_id == state["word_index"]["startseq"] and vocab.end_id == state["word_index"]["endseq"]
    assert vocab.pad_id == 0 and len(vocab) == VOCAB
    assert dict(vocab.word_index) == state["word_index"]


@pytest.mark.parametrize("protocol", [0, 1, 2, 4, 5])
def test_real_keras_tokenizer_pickle_loads(tmp_path, tutorial_tokenizer, protocol):
    path = _write(tmp_path / "tokenizer.pkl", pickle.dumps(tutorial_tokenizer, protocol=protocol))
    vocab = safe_load_tokenizer(path)

    assert dict(vocab.word_index) == tutorial_tokenizer.word_index
    assert len(vocab) == len(tutorial_tokenizer.word_index) + 1
    for text in ["A dog runs on the grass!", "a BLACK cat jumps, on the beach.", "unknown words only"]:
        assert vocab.encode(text) == tutorial_tokenizer.texts_to_sequences([text])[0]


def test_tokenizer_json_export_loads_the_same(tmp_path, tutorial_tokenizer):
    pkl = safe_load_tokenizer(_write(tmp_path / "tokenizer.pkl", pickle.dumps(tutorial_tokenizer)))
    js = safe_load_tokenizer(_write(tmp_path / "tokenizer.json", tutorial_tokenizer.to_json().encode()))
    assert js == pkl


@pytest.mark.parametrize(
    "kwargs", [{"num_words": 6}, {"oov_token": "<unk>"}, {"num_words": 7, "oov_token": "<unk>"}]
)
def test_encode_matches_texts_to_sequences_with_num_words_and_oov(tmp_path, keras_module, kwargs):
    captions = ["startseq a a a dog dog endseq", "startseq a dog runs endseq", *CAPTIONS]
    tokenizer = _keras_tokenizer(keras_module, captions, **kwargs)
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
        "import sys; from captioner.model.original.tokenizer import safe_load_tokenizer; "
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
    from captioner.model.original import tokenizer as tokenizer_module

    before = {
        cls: dict(vars(cls))
        for cls in (*tokenizer_module._ALLOWED_GLOBALS.values(), tokenizer_module._PickledTokenizer)
    }
    path = _write(tmp_path / "tokenizer.pkl", _build_on_global(module, name))
    with pytest.raises(BundleError, match="sets attributes on a class"):
        safe_load_tokenizer(path)
    assert {cls: dict(vars(cls)) for cls in before} == before
    assert collections.Counter.most_common is not None and callable(collections.Counter.most_common)
