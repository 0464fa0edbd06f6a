"""The label map builder on tiny made-up data: WordNet lemmas and hypernyms, co-occurrence, plurals."""

from __future__ import annotations

import numpy as np

from captioner.data.wordnet import Synset, WordNet
from captioner.model.labelling import (
    LabellingSettings,
    build_label_map,
    cooccurrence_words,
    hypernym_words,
    lemma_words,
    plural_forms,
)

SETTINGS = LabellingSettings()
VOCAB = {"a", "cat", "cats", "dog", "dogs", "fish", "jersey", "shirt", "shirts", "bus", "buses", "puppies",
         "toys", "toy", "men", "man", "mans", "device", "coffee", "water", "grass", "runs", "red"}  # fmt: skip


def tiny_wordnet() -> WordNet:
    """entity <- device <- machine; entity <- animal <- dog <- terrier <- scotch terrier; food <- coffee <-
    espresso; entity <- sandwich <- hot dog. Depths: device 1, dog 2, terrier 3, coffee 2."""
    s = [
        Synset(1, ("entity",), ()),
        Synset(2, ("device",), (1,)),
        Synset(3, ("animal",), (1,)),
        Synset(4, ("dog", "domestic dog"), (3,)),
        Synset(5, ("terrier",), (4,)),
        Synset(6, ("scotch terrier",), (5,)),
        Synset(7, ("food",), (1,)),
        Synset(8, ("coffee", "java"), (7,)),
        Synset(9, ("espresso",), (8,)),
        Synset(10, ("sandwich",), (1,)),
        Synset(11, ("hot dog", "red hot"), (10,)),
        Synset(12, ("computer", "device"), (2,)),  # "device" whose first sense is synset 2
        Synset(13, ("laptop",), (12,)),
    ]
    synsets = {x.offset: x for x in s}
    first = {"device": 2, "dog": 4, "terrier": 5, "coffee": 8, "computer": 12, "man": 99}
    tagged = {"noun": {}, "verb": {}, "adj": {}}
    return WordNet(synsets, tagged, first, {"men": "man"})


def test_lemmas_heads_and_closed_compounds():
    assert lemma_words(["jersey", "T-shirt", "tee shirt"], VOCAB, SETTINGS) == {
        "jersey": "lemma",
        "shirt": "lemma-head",
    }
    assert lemma_words(["tabby", "tabby cat"], VOCAB, SETTINGS) == {"cat": "lemma-head"}
    assert lemma_words(["goldfish", "Carassius auratus"], VOCAB, SETTINGS) == {"fish": "lemma-head"}
    assert lemma_words(["sh"], VOCAB, SETTINGS) == {}  # too short to hold a word after a first part


def test_a_head_needs_a_hypernym_that_says_it_when_wordnet_is_given():
    assert lemma_words(["hot dog"], VOCAB, SETTINGS) == {"dog": "lemma-head"}  # no WordNet: unchecked
    assert lemma_words(["hot dog"], VOCAB, SETTINGS, ancestor_words={"sandwich", "entity"}) == {}
    assert lemma_words(["Scotch dog"], VOCAB, SETTINGS, ancestor_words={"dog", "animal"}) == {
        "dog": "lemma-head"
    }


def test_hypernyms_nearest_level_known_words_skipped_and_general_ones_left_out():
    wn = tiny_wordnet()
    vocab = VOCAB | {"terrier", "animal", "food"}
    assert hypernym_words(wn, 6, vocab, max_steps=4) == ["terrier"]
    assert hypernym_words(wn, 6, vocab, max_steps=4, known={"terrier"}) == ["dog"]
    assert hypernym_words(wn, 6, vocab, max_steps=1, known={"terrier"}) == []  # dog is 2 levels up
    assert hypernym_words(wn, 6, vocab, max_steps=4, min_depth=3) == ["terrier"]
    assert hypernym_words(wn, 6, vocab, max_steps=4, min_depth=3, known={"terrier"}) == []  # dog: depth 2
    assert hypernym_words(wn, 9, vocab, max_steps=3) == ["coffee"]
    # "device" is a lemma of the computer synset too, but means synset 2 first: no word from synset 12.
    assert hypernym_words(wn, 13, vocab, max_steps=1) == []
    assert hypernym_words(wn, 13, vocab, max_steps=2) == ["device"]


def test_cooccurrence_lift_support_and_filter():
    # Photos 0-5: class 0 (confident), captions about dogs on grass; photos 6-11: class 1, about men.
    probs = np.full((14, 3), 0.05, np.float32)
    probs[:6, 0], probs[6:12, 1], probs[12:, 2] = 0.9, 0.9, 0.9
    dog = ["a dog runs on the grass", "a dog on grass", "a big dog", "a dog", "the dog runs"]
    man = ["a man", "a man in red", "the man in red", "a man runs", "men"]
    captions = [dog] * 6 + [man] * 6 + [dog] * 2  # class 2 has only 2 photos: below cooc_min_images
    settings = LabellingSettings(cooc_min_images=5, cooc_min_share=0.3, cooc_min_lift=1.5, cooc_max_words=3)
    got = cooccurrence_words(probs, captions, VOCAB, settings)
    assert got[0][0] == "dog" and "grass" in got[0] and "a" not in got[0]  # "a" is everywhere: lift 1
    assert got[1][0] == "man" and 2 not in got
    # A word filter (WordNet.is_thing in the builder) drops what is not a thing.
    assert "red" in cooccurrence_words(probs, captions, VOCAB, settings)[1]
    assert "red" not in cooccurrence_words(probs, captions, VOCAB, settings, lambda w: w != "red")[1]
    # Unconfident photos do not count.
    probs[:6, 0] = 0.2
    assert 0 not in cooccurrence_words(probs, captions, VOCAB, settings)


def test_plural_forms():
    wn = tiny_wordnet()
    assert plural_forms("cat", VOCAB) == ["cats"]
    assert plural_forms("bus", VOCAB) == ["buses"]
    assert plural_forms("puppy", VOCAB) == ["puppies"]
    assert plural_forms("toy", VOCAB) == ["toys"]
    assert plural_forms("man", VOCAB, wn) == ["men"]  # the exception, not "mans"
    assert plural_forms("men", VOCAB, wn) == ["man"]
    assert plural_forms("fish", VOCAB) == []


def test_build_label_map_records_sources_and_leaves_unnamed_classes_out():
    wn = tiny_wordnet()
    classes = [("n00000006", ["Scotch terrier", "Scotch dog"]), ("n00000009", ["espresso"]),
               ("n00000011", ["hot dog"]), ("n00000013", ["laptop"]), ("n00000001", ["zzz"])]  # fmt: skip
    settings = LabellingSettings(
        min_hypernym_depth=2
    )  # the tiny WordNet is shallow: device 1, dog and coffee 2
    labels = build_label_map(classes, ["<pad>", *VOCAB], "f" * 64, wn, {3: ["water", "fish"]}, settings)
    assert labels.sources[0] == {"dog": "lemma-head", "dogs": "plural"}  # terrier is not in VOCAB
    assert labels.sources[1] == {"coffee": "hypernym"}
    assert 2 not in labels.words  # a hot dog is no dog, and its hypernym has no word
    assert labels.sources[3] == {"water": "cooccurrence", "fish": "cooccurrence"}  # device: too general
    assert 4 not in labels.words and labels.names[1] == "espresso"
    assert labels.provenance["classes_mapped"] == 3
    assert labels.provenance["sources"] == {"cooccurrence": 2, "hypernym": 1, "lemma-head": 1, "plural": 1}
    assert labels.vocabulary_sha256 == "f" * 64
