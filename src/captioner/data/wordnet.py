"""WordNet 3.0 read from its database files: noun synsets, their hypernyms, and how often a word is a noun.

ImageNet's class ids are WordNet 3.0 noun synsets (``n02123045`` is offset 02123045 of ``data.noun``), so the
hypernyms of a class name the words a caption may use for it ("golden retriever" -> "retriever" -> "sporting dog"
-> "dog"). Only the label map builder reads WordNet (model/labelling.py), once; nothing at serving time.

The files are those of the Princeton release as Debian ships them (``apt-get install wordnet-base``:
/usr/share/wordnet, data.noun, index.noun, index.verb, index.adj, noun.exc); the format is wndb(5WN).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from captioner.errors import DataError

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
PHYSICAL_ENTITY = 1930  # offset of physical_entity.n.01: things one can photograph (not attributes or acts)
_POS_FILES = {"noun": "index.noun", "verb": "index.verb", "adj": "index.adj"}


@dataclass(frozen=True)
class Synset:
    """lemmas: lowercase, words joined by spaces ("tabby cat"); hypernyms: offsets (class and instance)."""

    offset: int
    lemmas: tuple[str, ...]
    hypernyms: tuple[int, ...]


class WordNet:
    """Noun synsets by offset, plural -> singular exceptions, and tagged-sense counts per part of speech."""

    def __init__(
        self,
        synsets: dict[int, Synset],
        tagged: dict[str, dict[str, int]],
        first_sense: dict[str, int],
        plurals: dict[str, str],
    ):
        """tagged: {pos: {lemma: tagged sense count}}; first_sense: {noun lemma: its most frequent synset};
        plurals: {plural: singular} (noun.exc, e.g. men -> man)."""
        self.synsets, self.tagged, self.first_sense, self.plurals = synsets, tagged, first_sense, plurals

    @classmethod
    def load(cls, folder: str | Path = DEFAULT_WORDNET_DIR) -> WordNet:
        """Read the database files in ``folder``. Raises DataError naming what is missing."""
        folder = Path(folder)
        if not (folder / "data.noun").is_file():
            raise DataError(
                f"no WordNet database in {folder} (data.noun): install it (Debian: apt-get install wordnet-base) "
                "or pass the folder that holds data.noun, index.noun, index.verb, index.adj and noun.exc"
            )
        synsets = {s.offset: s for s in _read_data(folder / "data.noun")}
        tagged: dict[str, dict[str, int]] = {}
        first_sense: dict[str, int] = {}
        for pos, name in _POS_FILES.items():
            tagged[pos] = {}
            for lemma, count, offsets in _read_index(folder / name):
                tagged[pos][lemma] = count
                if pos == "noun":
                    first_sense[lemma] = offsets[0]
        plurals = {}
        exc = folder / "noun.exc"
        if exc.is_file():
            for line in exc.read_text("utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2:
                    plurals[parts[0]] = parts[1].replace("_", " ")
        return cls(synsets, tagged, first_sense, plurals)

    def ancestors(self, offset: int, max_steps: int) -> list[list[int]]:
        """The hypernyms of ``offset`` level by level: [[parents], [grandparents], ...], at most ``max_steps``
        levels, each synset once (at its nearest level)."""
        seen, level, out = {offset}, [offset], []
        for _ in range(max_steps):
            nxt = [h for s in level for h in self._hypernyms(s) if h not in seen]
            nxt = list(dict.fromkeys(nxt))
            if not nxt:
                break
            seen.update(nxt)
            out.append(nxt)
            level = nxt
        return out

    def depth(self, offset: int) -> int:
        """Hypernym levels above ``offset`` up to the root (entity: 0, dog: 8, golden retriever: 12)."""
        return len(self.ancestors(offset, 64))

    def all_ancestors(self, offset: int) -> set[int]:
        return {a for level in self.ancestors(offset, 64) for a in level}

    def lemmas(self, offset: int) -> tuple[str, ...]:
        synset = self.synsets.get(offset)
        return synset.lemmas if synset else ()

    def is_thing(self, word: str) -> bool:
        """True when ``word`` is first of all a noun for a physical thing: its most frequent noun sense is a
        physical entity, and it was tagged as a noun (SemCor) at least as often as as a verb or adjective (``dog``,
        ``water``; not ``white``, ``play``, ``running``). Plural forms are read as their singular."""
        noun = self.singular(word)
        if noun not in self.first_sense:
            return False
        count = self.tagged["noun"].get(noun, 0)
        others = max(
            self.tagged["adj"].get(word, 0), *(self.tagged["verb"].get(v, 0) for v in _verb_bases(word))
        )
        if count == 0 or count < others or (count == others and word in self.tagged["adj"]):
            return False
        return PHYSICAL_ENTITY in self.all_ancestors(self.first_sense[noun])

    def singular(self, word: str) -> str:
        """The noun lemma of ``word``: itself if WordNet has it, else by noun.exc or by dropping -s/-es."""
        if word in self.first_sense:
            return word
        if word in self.plurals:
            return self.plurals[word]
        for cut in ("es", "s"):
            if word.endswith(cut) and word[: -len(cut)] in self.first_sense:
                return word[: -len(cut)]
        return word

    def _hypernyms(self, offset: int) -> tuple[int, ...]:
        synset = self.synsets.get(offset)
        return synset.hypernyms if synset else ()


def _verb_bases(word: str) -> list[str]:
    """The word and the verb forms it may inflect (running -> run, runn; jumped -> jump; plays -> play)."""
    out = [word]
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            out += [stem, stem + "e"]
            if len(stem) > 2 and stem[-1] == stem[-2]:
                out.append(stem[:-1])
    return out


def _read_data(path: Path) -> Iterator[Synset]:
    """Synsets of a wndb data file: offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [ptr]... | gloss"""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):  # the licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            n_words = int(fields[3], 16)
            words = fields[4 : 4 + 2 * n_words : 2]
            at = 4 + 2 * n_words
            n_ptrs = int(fields[at])
            hypernyms = []
            for p in range(n_ptrs):
                symbol, target, pos = fields[at + 1 + 4 * p : at + 4 + 4 * p]
                if symbol in ("@", "@i") and pos == "n":
                    hypernyms.append(int(target))
            lemmas = tuple(_lemma(w) for w in words)
            yield Synset(int(fields[0]), lemmas, tuple(hypernyms))


def _read_index(path: Path) -> Iterator[tuple[str, int, list[int]]]:
    """(lemma, tagged sense count, synset offsets most frequent first) of a wndb index file."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):
                continue
            fields = line.split()
            n_ptrs = int(fields[3])
            tagsense = int(fields[5 + n_ptrs])
            yield fields[0].replace("_", " "), tagsense, [int(x) for x in fields[6 + n_ptrs :]]


def _lemma(word: str) -> str:
    """data.noun's spelling -> ours: 'tabby_cat' -> 'tabby cat', 'domestic_cat(a)' markers dropped."""
    word = word.split("(", 1)[0]
    return word.replace("_", " ").lower()
