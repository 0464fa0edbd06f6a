"""The label map: for each ImageNet class of the encoder's head, the caption-vocabulary words that name it.

A bundle may hold one as ``labels.json`` (listed and checksummed in its manifest like every file). The Captioner
uses it for the label constraint: when an image's top ImageNet class is confident enough, its caption must hold
one of that class's words (decode/constraint.py). Built once from data by ``captioner build-labels``
(model/labelling.py), never written by hand::

    {"format": "captioner.labels", "format_version": 1,
     "vocabulary_sha256": "<sha256 of the bundle's tokenizer.json>",
     "provenance": {... how it was built ...},
     "classes": {"281": {"name": "tabby", "words": {"cat": "lemma-head", "cats": "plural"}}, ...}}

``words`` maps each word to the source that gave it (model/labelling.py lists them). Classes without a word are
left out. A bundle without the file loads as before; the constraint is then off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captioner.errors import BundleError

FORMAT = "captioner.labels"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LabelMap:
    """words: {class id (0..999): (vocabulary words, in order of preference)}; sources: {class id: {word:
    source}}; names: {class id: the class's readable name}."""

    words: dict[int, tuple[str, ...]]
    vocabulary_sha256: str
    sources: dict[int, dict[str, str]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        classes = {
            str(c): {
                "name": self.names.get(c, ""),
                "words": {w: self.sources.get(c, {}).get(w, "") for w in self.words[c]},
            }
            for c in sorted(self.words)
        }
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vocabulary_sha256": self.vocabulary_sha256,
            "provenance": self.provenance,
            "classes": classes,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LabelMap:
        """Raises BundleError when ``data`` is not a label map this code reads."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"not a {FORMAT} file")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"label map format version {data.get('format_version')}; this captioner reads {FORMAT_VERSION}: "
                "rebuild it with 'captioner build-labels'"
            )
        try:
            classes = {int(c): entry for c, entry in data["classes"].items()}
            words = {c: tuple(str(w) for w in e["words"]) for c, e in classes.items() if e["words"]}
            sources = {c: {str(w): str(s) for w, s in e["words"].items()} for c, e in classes.items()}
            names = {c: str(e.get("name", "")) for c, e in classes.items()}
            return cls(
                words, str(data["vocabulary_sha256"]), sources, names, dict(data.get("provenance", {}))
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"malformed label map: {exc!r}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        try:
            return cls.from_dict(json.loads(Path(path).read_text("utf-8")))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"cannot read the label map {path}: {exc}") from None
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from None


class LabelConstraints:
    """The label map as token ids, ready for the search: ``for_images(probs, min_prob)`` -> one constraint per
    image.

    Classes that share a word pool their probability for it (a tabby 0.4, a tiger cat 0.3 and an Egyptian cat 0.2
    make "cat" 0.9): an image's word mass is the summed probability of the classes whose words include it. The
    constraint is the word set of the class whose best word has the most mass (equal mass: the more probable
    class), when that mass is at least min_prob."""

    def __init__(self, labels: LabelMap, token_to_id: dict[str, int], num_classes: int = 1000):
        """token_to_id: the vocabulary; words it lacks are dropped (a map is built for one vocabulary)."""
        self.labels = labels
        self.ids = {
            c: ids
            for c, words in labels.words.items()
            if 0 <= c < num_classes and (ids := tuple(token_to_id[w] for w in words if w in token_to_id))
        }
        self.classes = np.array(sorted(self.ids), dtype=np.int64)  # mapped classes
        words = sorted({i for ids in self.ids.values() for i in ids})
        column = {w: j for j, w in enumerate(words)}
        self.has_word = np.zeros((len(self.classes), len(words)), dtype=np.float32)  # [mapped classes, words]
        width = max((len(ids) for ids in self.ids.values()), default=0)
        self.word_cols = np.full(
            (len(self.classes), width), len(words), dtype=np.int64
        )  # padded: a -1 column
        for r, c in enumerate(self.classes.tolist()):
            cols = [column[i] for i in self.ids[c]]
            self.has_word[r, cols] = 1.0
            self.word_cols[r, : len(cols)] = cols

    def for_images(self, probs: np.ndarray, min_prob: float) -> list[tuple[int, ...] | None]:
        """probs: float [B, classes]. Returns B entries: the token ids a caption must hold one of, or None (no
        word with min_prob of mass)."""
        return [ids if ids and mass >= min_prob else None for ids, mass in self.best_words(probs)]

    def best_words(self, probs: np.ndarray) -> list[tuple[tuple[int, ...], float]]:
        """probs: float [B, classes] -> per image (the chosen class's word ids, their word mass); ((), 0.0) when
        the map has no class."""
        if len(self.classes) == 0:
            return [((), 0.0)] * len(probs)
        p = np.asarray(probs, dtype=np.float32)[:, self.classes]  # [B, mapped]
        mass = p @ self.has_word  # [B, words]
        # Each class's best word mass; the class with the most (ties: its own probability) gives the words.
        padded = np.concatenate([mass, np.full((len(mass), 1), -1.0, np.float32)], axis=1)
        best = padded[:, self.word_cols].max(axis=2)  # [B, mapped]
        # (argmax: the first of equal maxima, i.e. the lowest column, as a stable sort would rank them)
        pick = np.where(best == best.max(axis=1, keepdims=True), p, -np.inf).argmax(axis=1)
        return [(self.ids[int(self.classes[r])], float(best[b, r])) for b, r in enumerate(pick.tolist())]
