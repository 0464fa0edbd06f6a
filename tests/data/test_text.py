import pytest

from captioner.data.text import normalize_caption, tokenize


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A child in a pink dress .", "a child in a pink dress"),
        ("The dog's ball", "the dogs ball"),
        ("the dog’s ball", "the dogs ball"),  # typographic apostrophe
        ("Café crème, Straße", "cafe creme strasse"),
        ("a 3-year-old boy", "a year old boy"),  # digits drop their chunk, hyphens split
        ("came 2nd in 1999 !!", "came in"),
        ("t-shirt/jeans", "t shirt jeans"),
        ("  Two \t DOGS\n play  ", "two dogs play"),
        ("犬dog猫cat", "dog cat"),  # non-Latin letters separate words
        ("... -- ' ?", ""),
        ("", ""),
    ],
)
def test_normalize_caption(text, expected):
    assert normalize_caption(text) == expected


def test_normalize_is_idempotent_and_tokenize_splits_it():
    text = "A Dog's 2 BIG balls, t-shirt & café!"
    once = normalize_caption(text)
    assert normalize_caption(once) == once
    assert tokenize(text) == once.split() == ["a", "dogs", "big", "balls", "t", "shirt", "cafe"]
    assert tokenize("123 ...") == []
