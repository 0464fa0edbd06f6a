"""Caption text normalisation: the one definition of a "word", shared by the vocabulary and the metrics.

If training, decoding and evaluation tokenised differently, BLEU would silently measure the tokeniser, so every
module that splits a caption into words calls ``tokenize`` from here.
"""

from __future__ import annotations

import re
import unicodedata

# Typographic apostrophes are common in user text ("dog’s"); treat them like the ASCII one.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2018": "'", "`": "'"})
# Digits stay inside a chunk here so that "2nd" or "3rd" is dropped as a whole rather than leaving "nd" or "rd".
_SPLIT = re.compile(r"[^a-z0-9']+")
_WORD = re.compile(r"[a-z]+")


def normalize_caption(text: str) -> str:
    """Return ``text`` as lowercase ASCII words of letters a-z separated by single spaces.

    Accents are stripped ("café" -> "cafe"), apostrophes are dropped ("dog's" -> "dogs"), anything else that is
    not a letter or digit separates words ("t-shirt" -> "t shirt"), and chunks containing digits or made only of
    punctuation are removed ("a 3-year-old" -> "a year old").
    """
    # casefold before NFKD so that e.g. "ß" becomes "ss" instead of vanishing.
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES).casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = (chunk.replace("'", "") for chunk in _SPLIT.split(stripped))
    return " ".join(w for w in words if _WORD.fullmatch(w))


def tokenize(text: str) -> list[str]:
    """Split ``text`` into normalised words (see ``normalize_caption``); an empty list if it has none."""
    return normalize_caption(text).split()
