"""Tiny Flickr8k folders in both layouts, built in tmp_path with a few generated JPEGs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

QUIRK = "2258277193_586949ec62.jpg"
TRAIN = [QUIRK, "1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]
DEV = ["1002674143_1b742ab4b8.jpg", "1003163366_44323f5815.jpg"]
TEST = ["1007129816_e794419615.jpg"]
UNSPLIT = ["1009434119_febe49276a.jpg"]

CAPTIONS = {
    name: [f"A dog number {k} runs on the grass near image {i} ." for k in range(5)]
    for i, name in enumerate(TRAIN + DEV + TEST + UNSPLIT)
}
CAPTIONS[QUIRK] = [
    "people waiting for the subway",
    "Some people looking out windows in a large building .",
    "Three people are waiting on a train platform .",
    "Three people standing at a station .",
    "two woman and one man standing near train tracks .",
]


def write_jpeg(path: Path, shade: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 64, 255 - shade)).save(path, "JPEG")


def _write_images(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        write_jpeg(folder / name, shade=i * 30)


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The image names of the tiny dataset, by split (tests must not import conftest: module names clash)."""
    return SimpleNamespace(
        quirk=QUIRK, train=list(TRAIN), dev=list(DEV), test=list(TEST), unsplit=list(UNSPLIT)
    )


@pytest.fixture
def jpeg():
    """write_jpeg(path, shade=128): a small solid-colour JPEG."""
    return write_jpeg


@pytest.fixture
def captions() -> dict[str, list[str]]:
    return {name: list(caps) for name, caps in CAPTIONS.items()}


@pytest.fixture
def original_root(tmp_path: Path) -> Path:
    """The original release: token file (with the '.jpg.1#0' quirk, listed out of #k order), split files,
    and images for every image except the test split (like the shared copy)."""
    root = tmp_path / "flickr8k"
    lines = []
    for name, caps in CAPTIONS.items():
        for k, caption in enumerate(caps):
            key = f"{name}.1#{k}" if name == QUIRK and k == 0 else f"{name}#{k}"
            lines.append(f"{key}\t{caption}")
    lines.insert(0, lines.pop(1))  # "#1" of the first image before its "#0": loaders must order by k
    root.mkdir()
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    for split, names in {"train": TRAIN, "dev": DEV, "test": TEST}.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    _write_images(root / "Images", TRAIN + DEV + UNSPLIT)
    return root


@pytest.fixture
def kaggle_root(tmp_path: Path) -> Path:
    """The Kaggle repack: captions.txt (CSV, one caption with a quoted comma, one unquoted), Images/, no splits."""
    root = tmp_path / "kaggle"
    rows = ["image,caption"]
    for name, caps in CAPTIONS.items():
        rows += [f"{name},{caption}" for caption in caps]
    rows[1] = f'{TRAIN[0]},"people, waiting for the subway"'
    rows[2] = f"{TRAIN[0]},Some people, looking out windows"
    root.mkdir()
    (root / "captions.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    _write_images(root / "Images", list(CAPTIONS))
    return root
