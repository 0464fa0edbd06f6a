"""The original design's tokenizer (a pickled Keras ``Tokenizer``), read safely and without Keras.

``tokenizer.pkl`` holds a ``keras.preprocessing.text.Tokenizer`` (id 0 = padding, words by frequency from 1,
captions wrapped in ``startseq ... endseq``). A pickle can run arbitrary code when loaded, so it is read by a
restricted unpickler that maps the Tokenizer class to an inert placeholder, allows only a handful of builtin
containers (handed out as constructors, so a pickle cannot change them), and refuses everything else.
``Tokenizer.to_json()`` exports are read too.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.errors import BundleError

# (start, end) word pairs the original tutorials used to wrap captions, in order of preference.
START_END_WORDS: tuple[tuple[str, str], ...] = (("startseq", "endseq"), ("<start>", "<end>"))

# Where the Keras Tokenizer class has lived over the years; a pickle records the module it was defined in.
TOKENIZER_MODULES = frozenset(
    {
        "keras.preprocessing.text",
        "keras.src.preprocessing.text",
        "keras.src.legacy.preprocessing.text",
        "tensorflow.keras.preprocessing.text",
        "keras_preprocessing.text",
        "tensorflow.python.keras.preprocessing.text",
    }
)

# A tokenizer.pkl of the Flickr8k tutorial is about 0.5 MB; anything far larger is not a tokenizer.
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024

_KERAS_TOKENIZER_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


class _NoClassState(type):
    """Metaclass of the Tokenizer placeholder: a pickle's BUILD on the class itself (not an instance) is refused.

    BUILD looks up ``__setstate__`` on whatever object is on the stack; a data descriptor on the metaclass wins
    over the class's own method, so a BUILD aimed at the class raises before any attribute is set.
    """

    @property
    def __setstate__(cls) -> Any:
        raise BundleError(_SET_ATTRIBUTES_REFUSED)


_SET_ATTRIBUTES_REFUSED = (
    "refusing to unpickle: the pickle sets attributes on a class (a tokenizer pickle only sets them on the "
    "Tokenizer object); the file was crafted or corrupted"
)


class _PickledTokenizer(metaclass=_NoClassState):
    """Inert stand-in for a Keras Tokenizer: unpickling it only stores the attribute dict."""

    state: dict[str, Any]

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise BundleError(f"the pickled Tokenizer has a {type(state).__name__} state; expected a dict")
        self.state = state


class _Constructor:
    """What the unpickler hands out for an allowed class: a callable that builds instances, not the class.

    A pickle can set attributes on any object it names (BUILD with a slot state calls setattr), so handing out
    the real ``collections.Counter`` would let a pickle change it process-wide. This wrapper refuses BUILD.
    """

    __slots__ = ("cls",)

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cls(*args, **kwargs)

    def __setstate__(self, state: object) -> None:
        raise BundleError(_SET_ATTRIBUTES_REFUSED)


# Harmless classes a Tokenizer's __dict__ needs (protocols 0-5). Every one only builds containers or numbers.
_ALLOWED_GLOBALS: dict[tuple[str, str], type] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("collections", "Counter"): collections.Counter,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "bool"): bool,
    ("builtins", "str"): str,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
}


def _new_reconstructor() -> Any:
    """A private copy of ``copyreg._reconstructor``, which protocols 0 and 1 call as ``(cls, object, None)``.

    cls and base are resolved through find_class, so cls can only be the placeholder or an allowed class's
    ``_Constructor``. A fresh function per lookup: a pickle can set attributes on it, and must not alter the real
    copyreg.
    """

    def _reconstructor(cls: Any, base: Any, state: object) -> object:
        cls, base = (c.cls if isinstance(c, _Constructor) else c for c in (cls, base))
        if not isinstance(cls, type) or not isinstance(base, type):
            raise BundleError(
                "refusing to unpickle: copyreg._reconstructor given something that is not a class"
            )
        if base is object:
            return object.__new__(cls)
        # Any: mypy cannot type a call of an arbitrary class's unbound __init__ (it is checked to be a class above).
        klass: Any = base
        obj = klass.__new__(cls, state)
        if klass.__init__ is not object.__init__:
            klass.__init__(obj, state)
        return obj

    return _reconstructor


# Python 2 names that Python 3 still writes for protocols 0-2 (pickle's fix_imports).
_PY2_ALIASES: dict[tuple[str, str], tuple[str, str]] = {
    ("__builtin__", "long"): ("builtins", "int"),
    ("__builtin__", "unicode"): ("builtins", "str"),
    ("copy_reg", "_reconstructor"): ("copyreg", "_reconstructor"),
}


class _TokenizerUnpickler(pickle.Unpickler):
    """Resolves only the Tokenizer class (to ``_PickledTokenizer``) and ``_ALLOWED_GLOBALS`` (as
    ``_Constructor``s, never the classes themselves); refuses the rest.

    Every way a pickle can name a callable (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) goes through find_class, so
    nothing outside the allow-list can be called, and nothing it names can be changed: BUILD on what find_class
    returns is refused. Persistent ids are refused by the base class.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module in TOKENIZER_MODULES and name == "Tokenizer":
            return _PickledTokenizer
        key = _PY2_ALIASES.get((module, name), (module, name))
        if key[0] == "__builtin__":
            key = ("builtins", key[1])
        if key in _ALLOWED_GLOBALS:
            return _Constructor(_ALLOWED_GLOBALS[key])
        if key == ("copyreg", "_reconstructor"):
            return _new_reconstructor()
        raise BundleError(
            f"refusing to unpickle {module}.{name}: tokenizer.pkl may only contain a Keras Tokenizer "
            "(a pickle that names anything else could run code; export the tokenizer with Tokenizer.to_json())"
        )


@dataclass(frozen=True)
class OriginalVocabulary:
    """A Keras Tokenizer's word <-> id mapping, with the decoding interface of ``captioner.data.Vocabulary``.

    Id 0 is padding; ``start_id``/``end_id`` are the ids of the start/end words (e.g. ``startseq``/``endseq``).
    ``size`` is the number of ids the model scores (its softmax width); by default ``num_words`` if the
    tokenizer had that cap, else ``len(word_index) + 1`` as in the original tutorial.
    """

    word_index: Mapping[str, int]
    start_word: str
    end_word: str
    num_words: int | None = None
    oov_token: str | None = None
    filters: str = _KERAS_TOKENIZER_FILTERS
    lower: bool = True
    split: str = " "
    size: int = 0
    index_word: Mapping[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index_word: dict[int, str] = {}
        for word, i in self.word_index.items():
            if not isinstance(word, str) or type(i) is not int or i < 1:
                raise BundleError(
                    f"tokenizer word_index maps {word!r} to {i!r}; expected words mapped to ids >= 1 (0 is padding)"
                )
            if i in index_word:
                raise BundleError(f"tokenizer word_index gives id {i} to both {index_word[i]!r} and {word!r}")
            index_word[i] = word
        for word in (self.start_word, self.end_word):
            if word not in self.word_index:
                raise BundleError(
                    f"tokenizer has no {word!r} word; it cannot be the tutorial's caption tokenizer"
                )
        if self.num_words is not None and (type(self.num_words) is not int or self.num_words < 2):
            raise BundleError(f"tokenizer num_words is {self.num_words!r}; expected None or an int >= 2")
        object.__setattr__(self, "index_word", index_word)
        if self.size == 0:
            object.__setattr__(self, "size", self.num_words or len(self.word_index) + 1)
        for name, i in (("start", self.start_id), ("end", self.end_id)):
            if i >= self.size:
                raise BundleError(
                    f"the {name} word {self.word_by_id(i)!r} has id {i}, outside the {self.size} ids the "
                    "vocabulary scores (tokenizer num_words is too small)"
                )

    @classmethod
    def from_tokenizer_config(cls, config: Mapping[str, Any], size: int | None = None) -> OriginalVocabulary:
        """Build from a Tokenizer's attributes (its pickled ``__dict__`` or ``to_json()['config']``)."""
        word_index = config.get("word_index")
        if isinstance(word_index, str):  # to_json() stores the mappings as JSON strings
            word_index = _parse_json(word_index, "word_index")
        if not isinstance(word_index, Mapping) or not word_index:
            raise BundleError(
                "the tokenizer has no word_index; was it fitted (Tokenizer.fit_on_texts) before saving?"
            )
        if config.get("char_level"):
            raise BundleError(
                "character-level tokenizers (char_level=True) are not supported; captions need words"
            )
        for start, end in START_END_WORDS:
            if start in word_index and end in word_index:
                break
        else:
            expected = " or ".join(f"{s!r}/{e!r}" for s, e in START_END_WORDS)
            raise BundleError(
                f"the tokenizer has no start/end words ({expected}); captions must have been wrapped"
            )
        filters = config.get("filters", _KERAS_TOKENIZER_FILTERS)
        split = config.get("split", " ")
        oov = config.get("oov_token")
        if not isinstance(filters, str) or not isinstance(split, str) or not split:
            raise BundleError("tokenizer 'filters' and 'split' must be strings (split non-empty)")
        if oov is not None and not isinstance(oov, str):
            raise BundleError(f"tokenizer oov_token is {oov!r}; expected a string or None")
        return cls(
            word_index=dict(word_index),
            start_word=start,
            end_word=end,
            num_words=config.get("num_words"),
            oov_token=oov,
            filters=filters,
            lower=bool(config.get("lower", True)),
            split=split,
            size=size or 0,
        )

    # -- the Vocabulary duck type --
    @property
    def pad_id(self) -> int:
        return 0

    @property
    def start_id(self) -> int:
        return self.word_index[self.start_word]

    @property
    def end_id(self) -> int:
        return self.word_index[self.end_word]

    @property
    def unk_id(self) -> int | None:
        """The id of the tokenizer's ``oov_token``, or None: the original simply dropped unknown words."""
        return self.word_index.get(self.oov_token) if self.oov_token is not None else None

    def __len__(self) -> int:
        return self.size

    def __contains__(self, word: object) -> bool:
        return word in self.word_index

    def word_by_id(self, token_id: int) -> str:
        i = int(token_id)
        if i == 0:
            return "<pad>"
        if i not in self.index_word:
            raise ValueError(f"token id {i} is not in the tokenizer (ids 1..{max(self.index_word)})")
        return self.index_word[i]

    def encode(self, text: str) -> list[int]:
        """Ids for ``text`` exactly as ``Tokenizer.texts_to_sequences`` gives them (no start/end added).

        Unknown words, and words at or beyond ``num_words``, become the oov id if the tokenizer had one and are
        dropped otherwise.
        """
        if self.lower:
            text = text.lower()
        table: dict[str, str | int | None] = dict.fromkeys(self.filters, self.split)
        text = text.translate(str.maketrans(table))
        unk = self.unk_id
        ids = []
        for word in (w for w in text.split(self.split) if w):
            i = self.word_index.get(word)
            if i is not None and not (self.num_words and i >= self.num_words):
                ids.append(i)
            elif unk is not None:
                ids.append(unk)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Words for ``ids`` joined by spaces, stopping at ``end_id`` and skipping pad, start and oov ids."""
        words = []
        skip = {self.pad_id, self.start_id, self.unk_id}
        for token_id in ids:
            i = int(token_id)
            if i == self.end_id:
                break
            if i < 0 or i >= self.size:
                raise ValueError(f"token id {i} is out of range for a vocabulary of size {self.size}")
            if i not in skip and i in self.index_word:
                words.append(self.index_word[i])
        return " ".join(words)

    def to_keras_json(self) -> dict[str, Any]:
        """The ``Tokenizer.to_json()`` structure (as a dict) of this vocabulary: what bundles store instead of a
        pickle, read back by ``safe_load_tokenizer``."""
        return {
            "class_name": "Tokenizer",
            "config": {
                "num_words": self.num_words,
                "filters": self.filters,
                "lower": self.lower,
                "split": self.split,
                "char_level": False,
                "oov_token": self.oov_token,
                "word_index": json.dumps(dict(self.word_index)),
                "index_word": json.dumps({str(i): w for i, w in self.index_word.items()}),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (for manifests and for converting the tokenizer to our own format)."""
        return {
            "format": "keras.Tokenizer",
            "word_index": dict(self.word_index),
            "start_word": self.start_word,
            "end_word": self.end_word,
            "num_words": self.num_words,
            "oov_token": self.oov_token,
            "filters": self.filters,
            "lower": self.lower,
            "split": self.split,
            "size": self.size,
        }


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"tokenizer {what} is not valid JSON ({e})") from None


def safe_load_tokenizer(path: str | Path) -> OriginalVocabulary:
    """Read a Keras Tokenizer from ``tokenizer.pkl`` (restricted unpickler) or from ``Tokenizer.to_json()`` output.

    Never executes code from the file and never imports Keras/TensorFlow. Raises BundleError if the file is
    missing, is not a tokenizer, names anything but a Tokenizer and plain containers, or lacks start/end words.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TOKENIZER_BYTES + 1)
    except FileNotFoundError:
        raise BundleError(f"tokenizer file not found: {path}") from None
    except OSError as e:
        raise BundleError(f"cannot read tokenizer file {path}: {e}") from None
    if len(data) > MAX_TOKENIZER_BYTES:
        raise BundleError(f"{path} is over {MAX_TOKENIZER_BYTES >> 20} MiB; that is not a caption tokenizer")

    if data.lstrip()[:1] == b"{":
        config = _tokenizer_config_from_json(data, path)
    else:
        config = _tokenizer_config_from_pickle(data, path)
    try:
        return OriginalVocabulary.from_tokenizer_config(config)
    except BundleError as e:
        raise BundleError(f"{path}: {e}") from None


def _tokenizer_config_from_json(data: bytes, path: Path) -> Mapping[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"tokenizer file {path} looks like JSON but is not valid ({e})") from None
    if (
        not isinstance(obj, dict)
        or obj.get("class_name") != "Tokenizer"
        or not isinstance(obj.get("config"), dict)
    ):
        raise BundleError(
            f"{path} is JSON but not a Tokenizer.to_json() export "
            '(expected {"class_name": "Tokenizer", "config": {...}})'
        )
    return obj["config"]


def _tokenizer_config_from_pickle(data: bytes, path: Path) -> Mapping[str, Any]:
    try:
        obj = _TokenizerUnpickler(io.BytesIO(data)).load()
    except BundleError as e:
        raise BundleError(f"{path}: {e}") from None
    except RecursionError:
        raise BundleError(f"{path}: the pickle is nested too deeply to be a tokenizer") from None
    except Exception as e:
        # Any malformed pickle: truncated, bad opcode, persistent id, a constructor given bad arguments...
        raise BundleError(f"{path} is not a readable tokenizer pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, _PickledTokenizer):
        raise BundleError(
            f"{path} holds a pickled {type(obj).__name__}, not a Keras Tokenizer; "
            "pickle the fitted Tokenizer itself (or export it with Tokenizer.to_json())"
        )
    return getattr(obj, "state", {})
