"""The label map: its file, the constraints it gives, and its place in a bundle (optional, checksummed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from captioner.errors import BundleError
from captioner.model.bundle import LABELS_FILE, MANIFEST_FILE, TOKENIZER_FILE, load_bundle, record_labels
from captioner.model.labels import LabelConstraints, LabelMap


def label_map(words: dict[int, tuple[str, ...]], sha: str = "a" * 64) -> LabelMap:
    sources = {c: dict.fromkeys(ws, "lemma") for c, ws in words.items()}
    return LabelMap(words, sha, sources, {c: f"class {c}" for c in words}, {"built": "in a test"})


def test_file_round_trip(tmp_path):
    labels = label_map({281: ("cat", "cats"), 7: ("dog",)})
    again = LabelMap.load(labels.save(tmp_path / "labels.json"))
    assert again == labels
    assert json.loads((tmp_path / "labels.json").read_text())["classes"]["281"]["words"] == {
        "cat": "lemma",
        "cats": "lemma",
    }


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"format": "other"}, "not a captioner.labels"),
        ({"format": "captioner.labels", "format_version": 99}, "format version 99"),
        ({"format": "captioner.labels", "format_version": 1, "classes": {}}, "malformed"),
        ({"format": "captioner.labels", "format_version": 1, "vocabulary_sha256": "a", "classes": {"x": {}}},
         "malformed"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused(tmp_path, data, match):
    (tmp_path / "labels.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=match):
        LabelMap.load(tmp_path / "labels.json")


def test_constraints_pool_classes_that_share_a_word():
    ids = {"cat": 10, "cats": 11, "dog": 12, "kite": 13}
    labels = label_map(
        {0: ("cat", "cats"), 1: ("cat",), 2: ("cat", "cats"), 3: ("dog",), 4: ("kite", "unknown")}
    )
    constraints = LabelConstraints(labels, ids, num_classes=6)
    probs = np.array(
        [
            [
                0.2,
                0.2,
                0.2,
                0.4,
                0.0,
                0.0,
            ],  # three cat classes (0.6 of "cat") beat the top class, a dog (0.4)
            [0.0, 0.0, 0.0, 0.45, 0.0, 0.55],  # the top class has no words: the dog's 0.45
            [0.0, 0.0, 0.0, 0.0, 0.3, 0.7],  # kite 0.3 < 0.4
            [0.1, 0.0, 0.4, 0.0, 0.0, 0.5],  # "cat" 0.5 from classes 0 and 2: the more probable one's words
        ],
        np.float32,
    )
    assert constraints.for_images(probs, 0.4) == [(10, 11), (12,), None, (10, 11)]
    assert constraints.for_images(probs, 0.5) == [(10, 11), None, None, (10, 11)]
    assert constraints.ids[4] == (13,)  # words the vocabulary lacks are dropped
    empty = LabelConstraints(label_map({4: ("unknown",)}), ids, num_classes=6)
    assert empty.for_images(probs, 0.1) == [None] * 4


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def test_a_bundle_without_labels_loads_and_one_with_them_round_trips(bundle_copy):
    bundle = load_bundle(bundle_copy)
    assert bundle.labels is None
    labels = label_map({1: ("cat",)}, bundle.manifest["files"][TOKENIZER_FILE])
    record_labels(bundle_copy, labels)
    again = load_bundle(bundle_copy)
    assert again.labels == labels and again.sha256 != bundle.sha256
    assert LABELS_FILE in again.manifest["files"] and again.manifest["labels"]["classes"] == 1


def test_labels_are_checksummed_and_must_fit_the_vocabulary(bundle_copy):
    sha = load_bundle(bundle_copy).manifest["files"][TOKENIZER_FILE]
    with pytest.raises(BundleError, match="another vocabulary"):
        record_labels(bundle_copy, label_map({1: ("cat",)}, "b" * 64))
    record_labels(bundle_copy, label_map({1: ("cat",)}, sha))
    path = bundle_copy / LABELS_FILE
    path.write_text(path.read_text().replace('"cat"', '"dog"'))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(bundle_copy)
    # A consistent manifest for a map of another vocabulary is refused too.
    label_map({1: ("cat",)}, "b" * 64).save(path)
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    from captioner.hashing import sha256_file

    manifest["files"][LABELS_FILE] = sha256_file(path)
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="another vocabulary"):
        load_bundle(bundle_copy)


def test_the_captioner_names_the_class_and_only_when_asked(bundle_copy, photo_files):
    from captioner.decode.options import DecodeOptions
    from captioner.loading import load

    plain = load(bundle_copy).caption_files(photo_files, DecodeOptions(max_length=8))
    sha = load_bundle(bundle_copy).manifest["files"][TOKENIZER_FILE]
    # Half the classes of the random head say "snow" (a word mass of about 0.5, above 0.01, below 1): whatever
    # the head sees, the caption must hold "snow".
    record_labels(bundle_copy, label_map(dict.fromkeys(range(500), ("snow",)), sha))
    captioner = load(bundle_copy)
    always = DecodeOptions(max_length=8, label_constraint_min_prob=0.01, label_constraint_always_prob=0.01)
    named = captioner.caption_files(photo_files, always)
    assert all("snow" in r.caption.split() for r in named), [r.caption for r in named]
    # Allowed no score drop at all, a named caption replaces the plain one only where it scores as well.
    strict = DecodeOptions(
        max_length=8,
        label_constraint_min_prob=0.01,
        label_constraint_max_score_drop=0.0,
        label_constraint_always_prob=1.0,
    )
    got = captioner.caption_files(photo_files, strict)
    for p, n, r in zip(plain, named, got, strict=True):
        assert r.caption == (n.caption if n.candidates[0].score >= p.candidates[0].score else p.caption)
    assert [r.caption for r in got] != [r.caption for r in named]  # the random decoder pays for "snow"
    off = captioner.caption_files(photo_files, DecodeOptions(max_length=8, label_constraint=False))
    assert [r.caption for r in off] == [r.caption for r in plain]
