"""The object probe: real photos unlike Flickr8k's scenes, and the words that name what is in them.

The photos ship inside installed packages (nobody here made them): scikit-image's ``skimage.data``, scikit-learn's
``load_sample_images`` and matplotlib's sample data (all three in the ``test`` extra). Each photo lists its
subjects, main one first, each with the words that name it (the ground truth, written once per photo). A caption
*names* the photo's object when it holds one of the main subject's words; only photos with such a word in the
model's vocabulary count toward the named rate (a model cannot say a word it does not have).

    photos = load_photos()                       # {name: RGB image}
    named_rate({name: caption}, vocabulary_words)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from captioner.data.text import tokenize
from captioner.errors import DataError


@dataclass(frozen=True)
class ProbePhoto:
    """name: "<package>.<photo>"; subjects: (subject, words that name it), the main subject first."""

    name: str
    subjects: tuple[tuple[str, frozenset[str]], ...]

    @property
    def object_words(self) -> frozenset[str]:
        return self.subjects[0][1]

    def counts(self, vocabulary: Collection[str]) -> bool:
        """Whether a caption from this vocabulary could name the main subject at all."""
        return any(w in vocabulary for w in self.object_words)

    def named(self, caption: str) -> bool:
        return bool(self.object_words & set(tokenize(caption)))

    def subjects_named(self, caption: str) -> list[str]:
        words = set(tokenize(caption))
        return [subject for subject, names in self.subjects if names & words]


def _s(subject: str, *words: str) -> tuple[str, frozenset[str]]:
    return subject, frozenset(words)


PROBE = (
    ProbePhoto("skimage.chelsea", (_s("cat", "cat", "cats", "kitten", "kitty"),)),
    ProbePhoto("skimage.coffee", (_s("cup of coffee", "coffee", "cup", "cups", "mug", "espresso", "cappuccino"),
                                  _s("saucer", "saucer", "plate"), _s("spoon", "spoon", "spoons"))),
    ProbePhoto("skimage.astronaut", (_s("astronaut", "astronaut", "astronauts", "spacesuit", "cosmonaut"),
                                     _s("woman", "woman", "lady"), _s("flag", "flag"))),
    ProbePhoto("skimage.rocket", (_s("rocket", "rocket", "rockets", "missile", "shuttle", "spacecraft"),
                                  _s("launch tower", "tower", "launchpad"))),
    ProbePhoto("skimage.motorcycle", (_s("motorcycle", "motorcycle", "motorcycles", "motorbike", "motorbikes",
                                         "bike", "bikes", "scooter"),)),
    ProbePhoto("sklearn.china", (_s("temple", "temple", "temples", "pagoda", "palace", "shrine", "building",
                                    "buildings", "roof", "tower"), _s("trees", "tree", "trees"))),
    ProbePhoto("sklearn.flower", (_s("flower", "flower", "flowers", "dahlia", "blossom", "petals"),)),
    ProbePhoto("matplotlib.grace_hopper", (_s("woman", "woman", "lady", "officer", "grandmother"),
                                           _s("uniform", "uniform", "navy"), _s("tie", "tie"))),
    ProbePhoto("skimage.camera", (_s("camera", "camera", "cameras", "tripod", "photographer"),
                                  _s("man", "man", "person", "photographer"))),
    ProbePhoto("skimage.coins", (_s("coins", "coin", "coins", "money"),)),
    ProbePhoto("skimage.moon", (_s("moon", "moon"),)),
    ProbePhoto("skimage.clock", (_s("clock", "clock", "clocks"),)),
    ProbePhoto("skimage.hubble_deep_field", (_s("galaxies", "galaxy", "galaxies", "stars", "star"),)),
    ProbePhoto("skimage.brick", (_s("brick wall", "brick", "bricks", "wall"),)),
)  # fmt: skip
# The eight photos of the issue, whose subjects the bench reports one by one.
ISSUE_PHOTOS = ("skimage.chelsea", "skimage.coffee", "skimage.astronaut", "skimage.rocket", "skimage.motorcycle",
                "sklearn.china", "sklearn.flower", "matplotlib.grace_hopper")  # fmt: skip


def load_photos(names: Collection[str] | None = None) -> dict[str, Image.Image]:
    """The probe's photos as RGB images, in PROBE order (``names``: only those). Raises DataError when a package
    that ships them is missing (pip install scikit-image scikit-learn matplotlib: the test extra)."""
    wanted = [p.name for p in PROBE if names is None or p.name in names]
    try:
        return {name: _LOADERS[name.split(".", 1)[0]](name.split(".", 1)[1]) for name in wanted}
    except ImportError as exc:
        raise DataError(f"the probe photos need {exc.name} (the test extra): {exc}") from None


def _skimage(photo: str) -> Image.Image:
    import skimage.data

    array = skimage.data.stereo_motorcycle()[0] if photo == "motorcycle" else getattr(skimage.data, photo)()
    return _rgb(np.asarray(array))


def _sklearn(photo: str) -> Image.Image:
    from sklearn.datasets import load_sample_image  # type: ignore[import-untyped]

    return _rgb(load_sample_image(f"{photo}.jpg"))


def _matplotlib(photo: str) -> Image.Image:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data(f"{photo}.jpg", asfileobj=False)
    with Image.open(str(path)) as image:
        return image.convert("RGB")


def _rgb(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:  # e.g. float images in [0, 1]
        a = array.astype(np.float64)
        array = (255 * (a - a.min()) / max(float(np.ptp(a)), 1e-9)).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


_LOADERS: dict[str, Callable[[str], Image.Image]] = {
    "skimage": _skimage,
    "sklearn": _sklearn,
    "matplotlib": _matplotlib,
}


def named_rate(captions: Mapping[str, str], vocabulary: Collection[str]) -> dict:
    """{"named": n, "counted": m, "rate": n / m}: of the probe photos in ``captions`` whose object word is in
    ``vocabulary``, how many captions name it."""
    photos = [p for p in PROBE if p.name in captions and p.counts(vocabulary)]
    named = sum(p.named(captions[p.name]) for p in photos)
    return {"named": named, "counted": len(photos), "rate": named / len(photos) if photos else 0.0}
