import numpy as np
import pytest

from captioner.data.dataset import build_sequences, length_percentile
from captioner.data.vocabulary import Vocabulary
from captioner.errors import DataError

VOCAB = Vocabulary(["a", "dog", "runs", "cat", "sits"])  # ids 4..8
S, E, P, U = VOCAB.start_id, VOCAB.end_id, VOCAB.pad_id, VOCAB.unk_id


def test_rows_are_shifted_teacher_forcing_sequences():
    captions = {"x.jpg": ["A dog runs .", "a cat"], "y.jpg": ["a zebra sits"], "z.jpg": ["unused"]}
    seq = build_sequences(["y.jpg", "x.jpg"], captions, VOCAB, max_length=4)
    assert len(seq) == 3
    assert seq.image_index.dtype == seq.inputs.dtype == seq.targets.dtype == np.int32
    assert seq.inputs.shape == seq.targets.shape == (3, 5)
    assert seq.image_index.tolist() == [0, 1, 1]  # indexes into the image_names given, in that order
    assert seq.inputs.tolist() == [[S, 4, U, 8, P], [S, 4, 5, 6, P], [S, 4, 7, P, P]]
    assert seq.targets.tolist() == [[4, U, 8, E, P], [4, 5, 6, E, P], [4, 7, E, P, P]]
    # wherever the target is a word, the next input is that same word (inputs = targets shifted right)
    words = (seq.targets[:, :-1] != P) & (seq.targets[:, :-1] != E)
    assert (seq.inputs[:, 1:][words] == seq.targets[:, :-1][words]).all()
    assert ((seq.targets == E).sum(axis=1) == 1).all()


def test_long_captions_are_truncated_and_still_end():
    seq = build_sequences(["x.jpg"], {"x.jpg": ["a dog runs a cat sits"]}, VOCAB, max_length=3)
    assert seq.inputs.tolist() == [[S, 4, 5, 6]]
    assert seq.targets.tolist() == [[4, 5, 6, E]]


def test_empty_captions_are_skipped_and_missing_images_raise():
    seq = build_sequences(["x.jpg"], {"x.jpg": ["123 ...", "a dog"]}, VOCAB, max_length=2)
    assert seq.inputs.tolist() == [[S, 4, 5]]
    empty = build_sequences([], {}, VOCAB, max_length=2)
    assert empty.inputs.shape == (0, 3) and empty.image_index.shape == (0,)
    with pytest.raises(DataError, match="nope.jpg"):
        build_sequences(["nope.jpg"], {"x.jpg": ["a dog"]}, VOCAB, max_length=2)
    with pytest.raises(ValueError):
        build_sequences(["x.jpg"], {"x.jpg": ["a dog"]}, VOCAB, max_length=0)


def test_length_percentile():
    captions = {"x.jpg": ["a", "a b", "a b c"], "y.jpg": ["a b c d", "a b c d e 5 !"]}  # 1..5 words
    assert length_percentile(captions, 100) == 5
    assert length_percentile(captions, 50) == 3
    assert length_percentile(captions, 0) == 1
    assert length_percentile(["a b", "a b c"], 60) == 3  # a flat list works too; rounds up to a real length
    assert length_percentile(["..."], 50) == 1
    with pytest.raises(DataError):
        length_percentile({}, 50)
    with pytest.raises(ValueError):
        length_percentile(captions, 101)
