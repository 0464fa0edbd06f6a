"""Teacher-forcing arrays: one row per caption, the whole sequence at once (not one sample per word)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from captioner.data.text import tokenize
from captioner.data.vocabulary import Vocabulary
from captioner.errors import DataError


@dataclass(frozen=True)
class CaptionSequences:
    """Decoder training rows, with T = max_length + 1.

    image_index: int32 [N], row -> index into the ``image_names`` given to ``build_sequences``.
    inputs: int32 [N, T], ``<start> w1 .. wn <pad> ..``.
    targets: int32 [N, T], ``w1 .. wn <end> <pad> ..`` (inputs shifted left by one); mask the loss where
    ``targets == vocab.pad_id``.
    """

    image_index: np.ndarray
    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.image_index)


def build_sequences(
    image_names: Sequence[str], captions: Mapping[str, Sequence[str]], vocab: Vocabulary, max_length: int
) -> CaptionSequences:
    """Encode every caption of every image in ``image_names`` (in that order) as a teacher-forcing row.

    max_length: most words kept per caption; longer captions are cut to their first ``max_length`` words and
    still end with ``<end>``. Captions with no words after normalisation are skipped (nothing to learn).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    width = max_length + 1
    rows: list[tuple[int, list[int]]] = []
    for i, name in enumerate(image_names):
        if name not in captions:
            raise DataError(
                f"image {name!r} has no captions; pass only names that are keys of the captions dict"
            )
        for caption in captions[name]:
            ids = vocab.encode(caption)[:max_length]
            if ids:
                rows.append((i, ids))
    image_index = np.fromiter((i for i, _ in rows), dtype=np.int32, count=len(rows))
    inputs = np.full((len(rows), width), vocab.pad_id, dtype=np.int32)
    targets = np.full((len(rows), width), vocab.pad_id, dtype=np.int32)
    inputs[:, 0] = vocab.start_id
    for r, (_, ids) in enumerate(rows):
        inputs[r, 1 : len(ids) + 1] = ids
        targets[r, : len(ids)] = ids
        targets[r, len(ids)] = vocab.end_id
    return CaptionSequences(image_index=image_index, inputs=inputs, targets=targets)


def length_percentile(captions: Mapping[str, Iterable[str]] | Iterable[str], q: float) -> int:
    """The ``q``-th percentile (0..100) of caption lengths in words, e.g. q=95 to choose ``max_length``.

    captions: a ``{image: [captions]}`` dict or a flat iterable of captions. Returns an actual length that
    occurs (at least 1), so that at least ``q`` percent of captions fit without truncation.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    texts = (c for cs in captions.values() for c in cs) if isinstance(captions, Mapping) else captions
    lengths = np.array([len(tokenize(t)) for t in texts])
    if lengths.size == 0:
        raise DataError("no captions given; cannot compute a length percentile")
    return max(1, int(np.percentile(lengths, q, method="higher")))
