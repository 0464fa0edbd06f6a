"""Builders shared by tests (importable; conftest.py holds the fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_photo(size=(96, 64), seed=0) -> Image.Image:
    """A smooth random RGB image (gradients + blobs), JPEG-friendly."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    arr = ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"

WORDS = ["dog", "cat", "man", "girl", "ball", "grass", "water", "snow", "runs", "jumps", "sits", "plays"]


def write_tiny_flickr8k(root: Path, n_train: int = 12, n_dev: int = 4) -> Path:
    """A Flickr8k folder in the original layout: token file, three split files, generated JPEGs."""
    root.mkdir(parents=True)
    (root / "Images").mkdir()
    names = [f"{1000 + i}_abc.jpg" for i in range(n_train + n_dev)]
    lines = []
    for i, name in enumerate(names):
        make_photo((64, 48), seed=i).save(root / "Images" / name)
        for k in range(5):
            a, b, c = WORDS[i % 4], WORDS[8 + (i + k) % 4], WORDS[4 + (i + 2 * k) % 4]
            lines.append(f"{name}#{k}\tA {a} {b} on the {c} .")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:n_train]) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(names[n_train:]) + "\n")
    (root / "Flickr_8k.testImages.txt").write_text("")
    return root
