"""Word <-> id mapping for captions, with fixed special tokens and a versioned JSON form.

Ids 0-3 are always ``<pad> <start> <end> <unk>``; words follow in order of frequency (ties by word), so the same
captions and settings always give the same ids.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from captioner.data.text import tokenize
from captioner.errors import DataError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, START, END, UNK)
FORMAT_NAME = "captioner.vocabulary"
FORMAT_VERSION = 1


class Vocabulary:
    """An id-ordered token list: ``SPECIAL_TOKENS`` at ids 0-3, then ``words``."""

    def __init__(self, words: Iterable[str]) -> None:
        self._id_to_token: tuple[str, ...] = (*SPECIAL_TOKENS, *words)
        self._token_to_id: dict[str, int] = {}
        for i, token in enumerate(self._id_to_token):
            if not isinstance(token, str) or not token or token.split() != [token]:
                raise DataError(
                    f"vocabulary token {i} is {token!r}; tokens must be non-empty strings without spaces"
                )
            if token in self._token_to_id:
                raise DataError(
                    f"vocabulary token {token!r} appears twice (ids {self._token_to_id[token]} and {i}); "
                    f"each word must appear once and the specials {SPECIAL_TOKENS} only at ids 0-3"
                )
            self._token_to_id[token] = i

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5, max_size: int | None = None) -> Vocabulary:
        """Count normalised words in ``captions`` and keep those seen at least ``min_count`` times.

        max_size: if given, the most tokens kept *including* the 4 specials (i.e. the embedding rows), dropping
        the rarest words first.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < len(SPECIAL_TOKENS):
            raise ValueError(
                f"max_size must be at least {len(SPECIAL_TOKENS)} (the special tokens), got {max_size}"
            )
        counts = Counter(word for caption in captions for word in tokenize(caption))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIAL_TOKENS)]
        return cls(words)

    # -- ids of the special tokens --
    @property
    def pad_id(self) -> int:
        return 0

    @property
    def start_id(self) -> int:
        return 1

    @property
    def end_id(self) -> int:
        return 2

    @property
    def never_generated(self) -> tuple[int, ...]:
        """Ids a caption never contains: <pad>, <start> and <unk> (decode() would drop them from the text)."""
        return (self.pad_id, self.start_id, self.unk_id)

    @property
    def unk_id(self) -> int:
        return 3

    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens in id order, specials first."""
        return self._id_to_token

    def __len__(self) -> int:
        return len(self._id_to_token)

    def __contains__(self, token: object) -> bool:
        return token in self._token_to_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._id_to_token == other._id_to_token

    def __hash__(self) -> int:
        return hash(self._id_to_token)

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"

    def token_to_id(self, token: str) -> int:
        """The id of ``token``, or ``unk_id`` if it is not in the vocabulary."""
        return self._token_to_id.get(token, self.unk_id)

    def id_to_token(self, token_id: int) -> str:
        """The token with id ``token_id``; ValueError if out of range."""
        i = int(token_id)
        if not 0 <= i < len(self._id_to_token):
            raise ValueError(f"token id {i} is out of range for a vocabulary of size {len(self)}")
        return self._id_to_token[i]

    def encode(self, text: str) -> list[int]:
        """Word ids of the normalised ``text``: words only (no start/end), ``unk_id`` for unknown words."""
        return [self._token_to_id.get(word, self.unk_id) for word in tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words for ``ids`` joined by spaces, stopping at the first ``end_id`` and skipping all special tokens.

        ``ids`` may be any iterable of ints, e.g. a 1-D NumPy array.
        """
        words = []
        for token_id in ids:
            i = int(token_id)
            if i == self.end_id:
                break
            if i >= len(SPECIAL_TOKENS):
                words.append(self.id_to_token(i))
            elif i < 0:
                raise ValueError(f"token id {i} is negative")
        return " ".join(words)

    # -- serialisation --
    def to_dict(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tokens": list(self._id_to_token)}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """Rebuild from ``to_dict()`` output; DataError if it is not a valid vocabulary of a known version."""
        if not isinstance(data, dict):
            raise DataError(f"a vocabulary must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
            raise DataError(
                f"unsupported vocabulary format {data.get('format')!r} version {data.get('version')!r}; "
                f"expected format {FORMAT_NAME!r} version {FORMAT_VERSION} (re-create it with Vocabulary.build)"
            )
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise DataError("vocabulary 'tokens' must be a list of strings in id order")
        head = tuple(tokens[: len(SPECIAL_TOKENS)])
        if head != SPECIAL_TOKENS:
            raise DataError(
                f"vocabulary must start with the special tokens {list(SPECIAL_TOKENS)}, got {list(head)}"
            )
        return cls(tokens[len(SPECIAL_TOKENS) :])

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary as JSON to ``path`` atomically (a crash never leaves half a file); returns it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, ensure_ascii=False, indent=0)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"vocabulary file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"vocabulary file {path} is not valid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
