"""Build a label map (model/labels.py) from data: no class or photo is mapped by hand.

Each word of a class records the source that gave it:

    lemma          a WordNet lemma of the class that is a vocabulary word ("jersey", "espresso", "cup")
    lemma-head     the head (last word) of a compound lemma: "tabby cat" -> cat, "goldfish" -> fish; with WordNet
                   only when a hypernym of the class carries that word too ("hot dog" is no dog)
    hypernym       the vocabulary's single-word lemmas of the nearest hypernym level that has any, at most
                   ``max_hypernym_steps`` up and not too general ("Scotch terrier" -> terrier -> dog; "espresso"
                   -> coffee), needs WordNet
    cooccurrence   words over-represented in the training captions of the photos whose top class this is:
                   lift = P(word | top class) / P(word) with a minimum support ("seashore" -> beach); with
                   WordNet only words that are first of all nouns for physical things (not "white", "running")
    plural         the other number of the words above in the vocabulary ("cats"; WordNet's exceptions: "men";
                   "dogs" -> dog)

Only the training split's captions are read: dev and test stay unseen.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from captioner.data.text import tokenize
from captioner.data.wordnet import WordNet
from captioner.model.labels import LabelMap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabellingSettings:
    """max_hypernym_steps: how far up WordNet's hypernyms a class may borrow a word...
    min_hypernym_depth: ...from a hypernym at least this many levels below the root (too general above).
    min_part_letters: a closed compound ("goldfish") splits only into parts of at least this many letters.
    cooc_min_prob: a training photo counts for its top class only when the class has at least this probability.
    cooc_min_images: a class needs at least this many such photos for co-occurrence words.
    cooc_min_share: a word must be in at least this share of those photos' captions (5 per photo)...
    cooc_min_lift: ...and this many times more often than in all training captions.
    cooc_max_words: at most this many co-occurrence words per class (the most shared first)."""

    max_hypernym_steps: int = 4
    min_hypernym_depth: int = 7
    min_part_letters: int = 3
    cooc_min_prob: float = 0.3
    cooc_min_images: int = 5
    cooc_min_share: float = 0.3
    cooc_min_lift: float = 3.0
    cooc_max_words: int = 2


def lemma_words(
    lemmas: Sequence[str],
    vocab: set[str],
    settings: LabellingSettings,
    ancestor_words: set[str] | None = None,
) -> dict[str, str]:
    """{word: "lemma" | "lemma-head"} from a class's lemmas. ancestor_words: every word of every hypernym lemma
    of the class (WordNet); a head must be one of them. None: heads are taken unchecked."""
    out: dict[str, str] = {}
    for lemma in lemmas:
        words = tokenize(lemma)  # the captions' own word rules: "T-shirt" -> t shirt
        if len(words) == 1 and words[0] in vocab:
            out.setdefault(words[0], "lemma")
            continue
        head = words[-1] if len(words) > 1 else _closed_head(words[0] if words else "", vocab, settings)
        if head and head in vocab and (ancestor_words is None or head in ancestor_words):
            out.setdefault(head, "lemma-head")
    return out


def _closed_head(word: str, vocab: set[str], settings: LabellingSettings) -> str | None:
    """The longest vocabulary word that ends ``word`` and leaves a first part ("goldfish" -> fish)."""
    n = settings.min_part_letters
    for start in range(n, len(word) - n + 1):
        if word[start:] in vocab:
            return word[start:]
    return None


def hypernym_words(
    wordnet: WordNet,
    offset: int,
    vocab: set[str],
    max_steps: int,
    min_depth: int = 0,
    known: Collection[str] = (),
) -> list[str]:
    """The vocabulary's single-word lemmas at the nearest hypernym level of synset ``offset`` that has any; only
    words whose most frequent sense is that hypernym ("weapon, arm" gives no "arm": an arm is a limb first), and
    at least ``min_depth`` levels below WordNet's root (not "device", "container", "animal"). Words in ``known``
    do not count ("Scotch terrier" with "terrier" known -> dog, a level further up)."""
    for level in wordnet.ancestors(offset, max_steps):
        words = [
            lemma
            for s in level
            for lemma in wordnet.lemmas(s)
            if " " not in lemma
            and lemma in vocab
            and lemma not in known
            and wordnet.first_sense.get(lemma) == s
            and wordnet.depth(s) >= min_depth
        ]
        if words:
            return list(dict.fromkeys(words))
    return []


def cooccurrence_words(
    probs: np.ndarray,
    captions: Sequence[Sequence[str]],
    vocab: set[str],
    settings: LabellingSettings,
    keep_word=None,
) -> dict[int, list[str]]:
    """{class: words} from training photos: probs float [N, classes], captions: N lists of caption texts.

    A photo's share of a word is the fraction of its captions that hold it; P(word | c) is the mean share over
    the photos whose top class is c (with probability >= cooc_min_prob), P(word) the mean over all photos.
    keep_word: an optional filter (e.g. WordNet.is_thing)."""
    n = len(captions)
    if probs.shape[0] != n:
        raise ValueError(f"{probs.shape[0]} probability rows for {n} photos")
    words = sorted(vocab)
    index = {w: i for i, w in enumerate(words)}
    share = np.zeros((n, len(words)), dtype=np.float32)
    for p, texts in enumerate(captions):
        counts = Counter(w for text in texts for w in set(tokenize(text)) if w in index)
        for w, k in counts.items():
            share[p, index[w]] = k / max(len(texts), 1)
    overall = share.mean(axis=0)
    top = probs.argmax(axis=1)
    confident = probs[np.arange(n), top] >= settings.cooc_min_prob
    out: dict[int, list[str]] = {}
    for c in np.unique(top[confident]).tolist():
        members = confident & (top == c)
        if members.sum() < settings.cooc_min_images:
            continue
        given = share[members].mean(axis=0)
        lift = given / np.maximum(overall, 1e-9)
        ok = np.flatnonzero((given >= settings.cooc_min_share) & (lift >= settings.cooc_min_lift))
        chosen = [words[i] for i in ok[np.argsort(-given[ok], kind="stable")]]
        chosen = [w for w in chosen if keep_word is None or keep_word(w)][: settings.cooc_max_words]
        if chosen:
            out[int(c)] = chosen
    return out


def plural_forms(word: str, vocab: set[str], wordnet: WordNet | None = None) -> list[str]:
    """The vocabulary's other number of ``word``: its plural (WordNet's exceptions such as man -> men if it has
    any, else -es after s/x/z/ch/sh, -ies after a consonant and y, -s), or its singular when it is a plural."""
    irregular = [p for p, s in wordnet.plurals.items() if s == word] if wordnet is not None else []
    if irregular:
        forms = irregular
    elif word.endswith(("s", "x", "z", "ch", "sh")):
        forms = [word + "es"]
    elif word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        forms = [word[:-1] + "ies"]
    else:
        forms = [word + "s"]
    if wordnet is not None and wordnet.singular(word) != word:  # a plural itself ("dogs"): its singular
        forms.append(wordnet.singular(word))
    return [f for f in dict.fromkeys(forms) if f in vocab and f != word]


def build_label_map(
    classes: Sequence[tuple[str, Sequence[str]]],
    vocabulary: Iterable[str],
    vocabulary_sha256: str,
    wordnet: WordNet | None = None,
    cooccurrence: dict[int, list[str]] | None = None,
    settings: LabellingSettings = LabellingSettings(),
    provenance: dict[str, Any] | None = None,
) -> LabelMap:
    """classes: per class id (classifier order), (WordNet synset id like "n02123045", lemmas).
    cooccurrence: ``cooccurrence_words``' result, or None. Returns the map with each word's source."""
    vocab = {w for w in vocabulary if not w.startswith("<")}
    words: dict[int, tuple[str, ...]] = {}
    sources: dict[int, dict[str, str]] = {}
    names: dict[int, str] = {}
    for c, (wnid, lemmas) in enumerate(classes):
        offset = int(wnid[1:]) if wnid[:1] == "n" and wnid[1:].isdigit() else None
        found: dict[str, str] = {}
        ancestor_words = None
        if wordnet is not None and offset is not None:
            ancestor_words = {
                w for a in wordnet.all_ancestors(offset) for lemma in wordnet.lemmas(a) for w in lemma.split()
            }
        found.update(lemma_words(lemmas, vocab, settings, ancestor_words))
        if wordnet is not None and offset is not None:  # also for "terrier": captions say "dog"
            steps, depth = settings.max_hypernym_steps, settings.min_hypernym_depth
            for w in hypernym_words(wordnet, offset, vocab, steps, depth, known=set(found)):
                found.setdefault(w, "hypernym")
        for w in (cooccurrence or {}).get(c, []):
            found.setdefault(w, "cooccurrence")
        for w in list(found):
            for p in plural_forms(w, vocab, wordnet):
                found.setdefault(p, "plural")
        if found:
            words[c], sources[c] = tuple(found), found
        names[c] = lemmas[0] if lemmas else ""
    counts = Counter(s for f in sources.values() for s in f.values())
    provenance = {
        **(provenance or {}),
        "settings": asdict(settings),
        "sources": dict(sorted(counts.items())),
        "classes_mapped": len(words),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return LabelMap(words, vocabulary_sha256, sources, {c: names[c] for c in words}, provenance)


def build_bundle_labels(
    bundle_path: str | Path | None,
    data_root: str | Path,
    features: str | Path | None = None,
    wordnet_dir: str | Path | None = None,
    settings: LabellingSettings = LabellingSettings(),
    image_dir: str | Path | None = None,
    progress: bool = True,
) -> LabelMap:
    """The label map of a bundle: its vocabulary, its encoder's ImageNet head on the Flickr8k training photos,
    WordNet from ``wordnet_dir`` (None: without WordNet's sources and checks).

    features: a feature cache folder of the bundle's encoder over the sorted train+dev photos (features.npy and
    index.json, as the training pipeline writes them; only read, never written); None: the encoder is run on
    the training photos here (minutes on a CPU)."""
    from captioner.data.flickr8k import load_flickr8k
    from captioner.encoders.imagenet import class_probabilities, class_synsets, head_weights
    from captioner.model.bundle import TOKENIZER_FILE, load_bundle

    bundle = load_bundle(bundle_path)
    vocabulary = bundle.vocabulary
    tokens = getattr(vocabulary, "tokens", None)
    if tokens is None:
        from captioner.errors import BundleError

        raise BundleError(
            "label maps are built for bundles with their own vocabulary (not original-format ones)"
        )
    dataset = load_flickr8k(data_root, image_dir)
    train = sorted(dataset.available("train"))
    refs = dataset.references("train")
    weight, bias = head_weights(bundle.encoder_path)
    pooled = train_features(bundle, dataset, train, features, progress)
    probs = class_probabilities(pooled, weight, bias)
    wordnet = WordNet.load(wordnet_dir) if wordnet_dir is not None else None
    vocab = {w for w in tokens if not w.startswith("<")}
    cooc = cooccurrence_words(probs, [refs[n] for n in train], vocab, settings, wordnet and wordnet.is_thing)
    provenance = {
        "classes": "encoders/imagenet_classes.tsv (WordNet 3.0 synsets and lemmas of ImageNet-1k)",
        "wordnet": None if wordnet is None else f"WordNet 3.0 database files in {wordnet_dir}",
        "cooccurrence": {"split": "train", "photos": len(train), "captions_per_photo": 5,
                         "probabilities": "the bundle encoder's ImageNet head on the photos' pooled features"},
        "command": "captioner build-labels",
    }  # fmt: skip
    return build_label_map(
        class_synsets(), tokens, bundle.manifest["files"][TOKENIZER_FILE], wordnet, cooc, settings, provenance
    )


def train_features(bundle, dataset, names: list[str], features, progress: bool) -> np.ndarray:
    """Pooled features [len(names), F] of the training photos, from a cache folder or by running the encoder."""
    import json

    from captioner.errors import DataError
    from captioner.hashing import sha256_hex

    if features is not None:
        folder = Path(features)
        index = json.loads((folder / "index.json").read_text())
        cached = sorted({n for s in ("train", "dev") for n in dataset.available(s)})
        if index.get("names_sha256") != sha256_hex("\n".join(cached)):
            raise DataError(f"{folder} does not hold the sorted train+dev photos of this Flickr8k copy")
        matrix = np.load(folder / "features.npy", mmap_mode="r")
        row = {n: i for i, n in enumerate(cached)}
        return np.asarray(matrix[[row[n] for n in names]], dtype=np.float32)
    from tqdm import tqdm

    from captioner.encoders.images import load_image
    from captioner.encoders.runtime import OnnxEncoder

    encoder = OnnxEncoder(bundle.encoder_path)
    spec = encoder.preprocessing
    out = []
    for s in tqdm(range(0, len(names), 32), desc="features", disable=not progress):
        images = [
            load_image(dataset.image_path(n), draft_size=spec.size, resize=spec.resize)
            for n in names[s : s + 32]
        ]
        out.append(encoder.run(images).features)
    return np.concatenate(out)
