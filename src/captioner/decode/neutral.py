"""Gender-neutral captions: rewrite gendered person words, keeping the sentence grammatical.

"a man in a red shirt" -> "a person in a red shirt"; "a girl holding her doll" -> "a child holding their doll";
"she is running" -> "they are running"; "a man and a woman" -> "two people". A pure function over text:
whitespace, punctuation and capitalisation are kept; Flickr8k's tokenised possessive ("man 's") works as "man's".
Words that are gendered but mostly name things, not people ("cowboy hat", "groom a horse"), are left alone.
"""

from __future__ import annotations

import re

# Singular -> (neutral singular, neutral plural); plurals are derived below.
_NOUNS: dict[str, tuple[str, str]] = {
    "man": ("person", "people"),
    "woman": ("person", "people"),
    "guy": ("person", "people"),
    "lady": ("person", "people"),
    "gentleman": ("person", "people"),
    "boy": ("child", "children"),
    "girl": ("child", "children"),
    "schoolboy": ("schoolchild", "schoolchildren"),
    "schoolgirl": ("schoolchild", "schoolchildren"),
    "policeman": ("police officer", "police officers"),
    "policewoman": ("police officer", "police officers"),
    "fireman": ("firefighter", "firefighters"),
    "businessman": ("businessperson", "businesspeople"),
    "businesswoman": ("businessperson", "businesspeople"),
    "mother": ("parent", "parents"),
    "father": ("parent", "parents"),
    "mom": ("parent", "parents"),
    "dad": ("parent", "parents"),
    "son": ("child", "children"),
    "daughter": ("child", "children"),
    "brother": ("sibling", "siblings"),
    "sister": ("sibling", "siblings"),
    "husband": ("spouse", "spouses"),
    "wife": ("spouse", "spouses"),
    "boyfriend": ("partner", "partners"),
    "girlfriend": ("partner", "partners"),
    "grandmother": ("grandparent", "grandparents"),
    "grandfather": ("grandparent", "grandparents"),
    "waitress": ("server", "servers"),
    "actress": ("actor", "actors"),
}
_PLURALS = {
    "men": "man",
    "women": "woman",
    "gentlemen": "gentleman",
    "ladies": "lady",
    "policemen": "policeman",
    "policewomen": "policewoman",
    "firemen": "fireman",
    "businessmen": "businessman",
    "businesswomen": "businesswoman",
    "waitresses": "waitress",
    "actresses": "actress",
}
_PLURALS.update({w + "s": w for w in _NOUNS if w not in _PLURALS.values()})
_WORDS: dict[str, str] = {w: s for w, (s, _) in _NOUNS.items()}
_WORDS.update({p: _NOUNS[s][1] for p, s in _PLURALS.items()})
_WORDS.update({"himself": "themselves", "herself": "themselves", "him": "them", "hers": "theirs"})

# Every word this module rewrites (lower case): after neutralize() none is left.
GENDERED_WORDS = frozenset(_WORDS) | {"he", "she", "his", "her"}

# After "he"/"she" -> "they": the verb forms that change.
_AGREE = {
    "is": "are",
    "was": "were",
    "has": "have",
    "does": "do",
    "isn't": "aren't",
    "wasn't": "weren't",
    "doesn't": "don't",
    "hasn't": "haven't",
    "'s": "'re",
}
# A word after "her" that shows it is an object ("hugging her tightly"), not a possessive ("her dog").
_NOT_A_NOUN_PHRASE = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "as",
        "at",
        "by",
        "for",
        "from",
        "in",
        "into",
        "of",
        "off",
        "on",
        "onto",
        "out",
        "over",
        "to",
        "up",
        "down",
        "with",
        "while",
        "near",
        "under",
        "through",
        "around",
        "behind",
        "beside",
        "during",
        "back",
        "away",
        "again",
        "too",
        "this",
        "that",
        "these",
        "those",
        "is",
        "are",
        "was",
        "were",
        "who",
        "which",
        "while",
        "his",
        "her",
        "their",
        "its",
        "my",
        "your",
        "our",
        "some",
    ]
)
_TOKEN = re.compile(r"\s+|[A-Za-z]+(?:'[A-Za-z]*)?|'[A-Za-z]+|[^\sA-Za-z]+")


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _is_word(token: str) -> bool:
    return token[:1].isalpha() or token.lower() == "'s"


def _third_person_to_plural(verb: str) -> str | None:
    """'walks' -> 'walk', 'watches' -> 'watch', 'carries' -> 'carry'; None if ``verb`` does not look like one."""
    v = verb.lower()
    if v in _AGREE:
        return _AGREE[v]
    if len(v) < 3 or not v.endswith("s") or v.endswith(("ss", "us", "is", "'s")):
        return None
    if v.endswith("ies") and len(v) > 4:
        return verb[:-3] + "y"
    if v.endswith(("ches", "shes", "sses", "xes", "zzes", "oes")):
        return verb[:-2]
    return verb[:-1]


def neutralize(text: str) -> str:
    """``text`` with gendered person words replaced by neutral ones (see the module docstring)."""
    tokens = _TOKEN.findall(text)
    words = [i for i, t in enumerate(tokens) if _is_word(t)]
    for n, i in enumerate(words):
        token = tokens[i]
        lower = token.lower()
        base, poss = lower, ""
        if lower.endswith("'s") and lower != "'s":
            base, poss = lower[:-2], "'s"
        elif lower.endswith("'"):
            base, poss = lower[:-1], "'s"  # "boys'" -> "children's"
        following = words[n + 1] if n + 1 < len(words) else None
        # Punctuation between this word and the next ends the phrase ("hugging her, ..." / "his.").
        next_word = (
            tokens[following].lower()
            if following is not None and all(t.isspace() for t in tokens[i + 1 : following])
            else None
        )
        if base in _WORDS:
            new = _WORDS[base] + poss
            if poss and new.endswith("s's"):
                new = new[:-1]  # "parents's" -> "parents'"
            tokens[i] = _match_case(new, token)
            _fix_article(tokens, words, n)
        elif lower in ("he", "she", "he's", "she's"):
            tokens[i] = _match_case("they're" if lower.endswith("'s") else "they", token)
            if following is not None and next_word is not None and not lower.endswith("'s"):
                verb = _third_person_to_plural(tokens[following])
                if verb is not None:
                    tokens[following] = verb
        elif lower == "his":
            tokens[i] = _match_case(
                "their" if next_word and next_word not in _NOT_A_NOUN_PHRASE else "theirs", token
            )
        elif lower == "her":
            tokens[i] = _match_case(
                "their" if next_word and next_word not in _NOT_A_NOUN_PHRASE else "them", token
            )
    return _pairs_to_plural("".join(tokens))


def _fix_article(tokens: list[str], words: list[int], n: int) -> None:
    """Make the article right before the rewritten word ``words[n]`` agree with it ("an actress" -> "an actor")."""
    if n == 0 or tokens[words[n - 1]].lower() not in ("a", "an"):
        return
    article = "an" if tokens[words[n]][:1].lower() in "aeio" else "a"
    tokens[words[n - 1]] = _match_case(article, tokens[words[n - 1]])


# "a person and a person" reads badly: say "two people". Only for the same bare noun on both sides.
_PAIRS = re.compile(r"\b(a|one) (person|child|parent) and (?:a )?\2\b(?!')", re.IGNORECASE)
_BARE_PAIRS = re.compile(r"\b(their|the) (person|child|parent) and \2\b(?!')", re.IGNORECASE)
_PLURAL_OF = {"person": "people", "child": "children", "parent": "parents"}


def _pairs_to_plural(text: str) -> str:
    def two(m: re.Match) -> str:
        return _match_case("two", m.group(1)) + " " + _PLURAL_OF[m.group(2).lower()]

    text = _PAIRS.sub(two, text)
    text = _BARE_PAIRS.sub(lambda m: f"{m.group(1)} {_PLURAL_OF[m.group(2).lower()]}", text)
    text = re.sub(r"\b(people|children|parents) and \1\b(?!')", r"\1", text, flags=re.IGNORECASE)
    return re.sub(r"\b(baby|infant) child\b", r"\1", text, flags=re.IGNORECASE)  # "a baby boy" -> "a baby"
