import json

import numpy as np
import pytest

from captioner.data.vocabulary import SPECIAL_TOKENS, Vocabulary
from captioner.errors import DataError

CAPTIONS = ["A dog runs.", "a dog sits", "The cat sits", "a cat", "a bird!"]


def test_build_counts_normalized_words_and_orders_by_count_then_word():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    # a:4, cat/dog/sits:2 (ties alphabetical), then bird/runs/the:1
    assert vocab.tokens == (*SPECIAL_TOKENS, "a", "cat", "dog", "sits", "bird", "runs", "the")
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert len(vocab) == 11


def test_build_min_count_and_max_size():
    assert Vocabulary.build(CAPTIONS, min_count=2).tokens[4:] == ("a", "cat", "dog", "sits")
    # max_size counts the 4 specials: room for the 2 most frequent words
    assert Vocabulary.build(CAPTIONS, min_count=1, max_size=6).tokens[4:] == ("a", "cat")
    with pytest.raises(ValueError):
        Vocabulary.build(CAPTIONS, min_count=0)
    with pytest.raises(ValueError):
        Vocabulary.build(CAPTIONS, max_size=3)


def test_build_is_deterministic_whatever_the_input_order():
    assert Vocabulary.build(CAPTIONS, min_count=1) == Vocabulary.build(reversed(CAPTIONS), min_count=1)


def test_encode_decode_round_trip():
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    ids = vocab.encode("A DOG sits on the zebra.")
    assert ids == [4, 6, 7, vocab.unk_id, 10, vocab.unk_id]  # "on" and "zebra" unknown, no specials added
    assert vocab.decode(vocab.encode("the dog sits")) == "the dog sits"
    # decode stops at <end>, skips the other specials (including <unk>), accepts NumPy ints
    row = np.array([vocab.start_id, 4, vocab.unk_id, 6, vocab.end_id, 5, vocab.pad_id])
    assert vocab.decode(row) == "a dog"
    assert vocab.decode([]) == ""
    with pytest.raises(ValueError):
        vocab.decode([4, 99])


def test_lookups():
    vocab = Vocabulary(["dog", "cat"])
    assert "dog" in vocab and "<pad>" in vocab and "zebra" not in vocab
    assert vocab.token_to_id("cat") == 5
    assert vocab.token_to_id("zebra") == vocab.unk_id
    assert vocab.id_to_token(4) == "dog"
    assert vocab.id_to_token(np.int64(2)) == "<end>"
    with pytest.raises(ValueError):
        vocab.id_to_token(6)


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(CAPTIONS, min_count=1)
    path = vocab.save(tmp_path / "sub" / "vocab.json")
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["tokens"][:4] == list(SPECIAL_TOKENS)
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.encode("a bird") == vocab.encode("a bird")
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp file left behind


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["<pad>", "<start>", "<unk>", "<end>", "dog"], "special tokens"),
        (["dog", "<pad>", "<start>", "<end>", "<unk>"], "special tokens"),
        ([*SPECIAL_TOKENS, "dog", "cat", "dog"], "appears twice"),
        ([*SPECIAL_TOKENS, "dog", "<unk>"], "appears twice"),
        ([*SPECIAL_TOKENS, "hot dog"], "without spaces"),
        ([*SPECIAL_TOKENS, ""], "non-empty"),
        ([*SPECIAL_TOKENS, 7], "non-empty"),
    ],
)
def test_from_dict_rejects_invalid_tokens(tokens, message):
    with pytest.raises(DataError, match=message):
        Vocabulary.from_dict({"format": "captioner.vocabulary", "version": 1, "tokens": tokens})


def test_from_dict_rejects_unknown_version_and_load_names_the_file(tmp_path):
    with pytest.raises(DataError, match="version"):
        Vocabulary.from_dict(
            {"format": "captioner.vocabulary", "version": 99, "tokens": list(SPECIAL_TOKENS)}
        )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        Vocabulary.load(bad)
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")
    bad.write_text(json.dumps({"format": "captioner.vocabulary", "version": 1, "tokens": ["dog"]}))
    with pytest.raises(DataError, match="bad.json.*special tokens"):
        Vocabulary.load(bad)
