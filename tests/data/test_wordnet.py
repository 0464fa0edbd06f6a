"""WordNet read from tiny database files written in the wndb format (the real ones are 30 MB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.data.wordnet import PHYSICAL_ENTITY, WordNet
from captioner.errors import DataError

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
# offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [symbol offset pos source/target]... | gloss
DATA_NOUN = f"""{PHYSICAL_ENTITY:08d} 03 n 01 physical_entity 0 000 | an entity that has physical existence
00002000 03 n 01 object 0 001 @ {PHYSICAL_ENTITY:08d} n 0000 | a tangible thing
00003000 03 n 01 abstraction 0 000 | a general concept
00003100 07 n 01 white 0 001 @ 00003000 n 0000 | the colour
02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 00002000 n 0000 ~ 02099601 n 0000 | a dog
02098000 05 n 01 terrier 0 001 @ 02084071 n 0000 | a terrier
02099601 05 n 02 Scotch_terrier 0 Scottish_terrier 0 001 @ 02098000 n 0000 | a dog
00004000 04 n 01 running 0 001 @i 00003000 n 0000 | the act
10000000 18 n 01 man 0 001 @ 00002000 n 0000 | an adult male
"""
INDEX_NOUN = """dog n 1 2 @ ~ 1 3 02084071
terrier n 1 1 @ 1 1 02098000
white n 1 1 @ 1 2 00003100
running n 1 1 @ 1 1 00004000
man n 1 1 @ 1 9 10000000
object n 1 1 @ 1 0 00002000
"""
INDEX_ADJ = "white a 1 0 1 2 00393105\n"
INDEX_VERB = "run v 1 0 1 7 01926311\ndog v 1 0 1 1 02001876\n"


@pytest.fixture
def wordnet_dir(tmp_path: Path) -> Path:
    for name, text in [("data.noun", DATA_NOUN), ("index.noun", INDEX_NOUN), ("index.adj", INDEX_ADJ),
                       ("index.verb", INDEX_VERB), ("noun.exc", "men man\n")]:  # fmt: skip
        (tmp_path / name).write_text(HEADER + text if name != "noun.exc" else text)
    return tmp_path


def test_synsets_lemmas_and_hypernyms_level_by_level(wordnet_dir):
    wn = WordNet.load(wordnet_dir)
    assert wn.lemmas(2099601) == ("scotch terrier", "scottish terrier")
    assert wn.lemmas(2084071) == ("dog", "domestic dog", "canis familiaris")
    assert wn.ancestors(2099601, 2) == [[2098000], [2084071]]  # the hyponym pointer (~) is no parent
    assert wn.ancestors(2099601, 10)[-1] == [PHYSICAL_ENTITY]
    assert wn.depth(2099601) == 4 and wn.depth(PHYSICAL_ENTITY) == 0
    assert wn.all_ancestors(4000) == {3000}  # instance hypernyms (@i) count


def test_is_thing_wants_a_physical_noun_more_often_tagged_as_a_noun(wordnet_dir):
    wn = WordNet.load(wordnet_dir)
    assert wn.is_thing("dog") and wn.is_thing("dogs") and wn.is_thing("terrier") and wn.is_thing("men")
    assert not wn.is_thing("white")  # an abstraction, and as often an adjective
    assert not wn.is_thing("running")  # "run" is tagged as a verb more often
    assert not wn.is_thing("object")  # never tagged as a noun at all
    assert not wn.is_thing("blorp")


def test_singular(wordnet_dir):
    wn = WordNet.load(wordnet_dir)
    assert [wn.singular(w) for w in ("dogs", "men", "dog", "blorps")] == ["dog", "man", "dog", "blorps"]


def test_a_folder_without_the_database_is_refused_with_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="wordnet-base"):
        WordNet.load(tmp_path)
