"""The object probe: its ground truth, what counts as naming, and its photos from installed packages."""

from __future__ import annotations

import pytest

from captioner.evaluation.probe import ISSUE_PHOTOS, PROBE, load_photos, named_rate

PHOTOS = {p.name: p for p in PROBE}


def test_every_photo_has_a_main_subject_and_the_issue_photos_are_there():
    assert len(PHOTOS) == len(PROBE) and set(ISSUE_PHOTOS) <= set(PHOTOS)
    assert all(p.subjects and p.object_words for p in PROBE)


def test_named_means_a_word_of_the_main_subject_as_a_whole_word():
    cat = PHOTOS["skimage.chelsea"]
    assert cat.named("A tabby CAT on a mat.") and cat.named("two cats")
    assert not cat.named("a man sitting on a bench") and not cat.named("a catamaran")
    coffee = PHOTOS["skimage.coffee"]
    assert coffee.subjects_named("a cup of coffee on a plate") == ["cup of coffee", "saucer"]


def test_named_rate_counts_only_photos_the_vocabulary_can_name():
    vocabulary = {"a", "cat", "dog", "coffee", "moon"}
    captions = {"skimage.chelsea": "a cat", "skimage.coffee": "a dog", "skimage.rocket": "a dog",
                "skimage.moon": "a moon"}  # fmt: skip
    # rocket: none of its words in this vocabulary, so it does not count.
    assert named_rate(captions, vocabulary) == {"named": 2, "counted": 3, "rate": pytest.approx(2 / 3)}
    assert named_rate({}, vocabulary)["rate"] == 0.0


def test_photos_load_from_the_packages_as_rgb():
    photos = load_photos(["skimage.chelsea", "skimage.camera", "sklearn.flower", "matplotlib.grace_hopper"])
    assert list(photos) == ["skimage.chelsea", "sklearn.flower", "matplotlib.grace_hopper", "skimage.camera"]
    for image in photos.values():
        assert image.mode == "RGB" and min(image.size) >= 300
