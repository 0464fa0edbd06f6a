"""Flickr8k: captions, splits and image paths from a dataset folder, and a downloader for the original release.

Two layouts are read:
- the original release: ``Flickr8k.token.txt`` (lines ``<image>#<k><TAB><caption>``),
  ``Flickr_8k.{train,dev,test}Images.txt`` and an image folder (``Flicker8k_Dataset/`` from the zip, sic, or
  ``Images/``);
- the Kaggle repack: ``captions.txt`` (CSV with header ``image,caption``) and ``Images/``, usually without split
  files, in which case ``hash_split`` makes a deterministic one.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from captioner.errors import DataError

SPLITS = ("train", "dev", "test")
TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_FILE = "captions.txt"
SPLIT_FILES = {split: f"Flickr_8k.{split}Images.txt" for split in SPLITS}
IMAGE_DIRS = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")

# The standard split sizes; hash_split reproduces them for the 8,091 images and scales them for other counts.
FLICKR8K_IMAGES = 8091
TRAIN_SIZE, DEV_SIZE = 6000, 1000
SPLIT_SEED = "captioner-flickr8k-split-v1"

DOWNLOAD_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/"
# archive -> the path it unpacks to in the destination, whose presence means "already done".
ARCHIVES = {"Flickr8k_text.zip": TOKEN_FILE, "Flickr8k_Dataset.zip": "Flicker8k_Dataset"}

# The original token file writes one id as "2258277193_586949ec62.jpg.1#0": drop the stray ".1".
_QUIRK = re.compile(r"^(.+\.(?:jpe?g|png))\.\d+$", re.IGNORECASE)
_EXAMPLE_LINE = "1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress is climbing up a set of stairs ."


@dataclass(frozen=True)
class Flickr8k:
    """A loaded dataset folder.

    captions: image file name -> its captions as written (not normalised), in ``#k`` order.
    splits: "train" | "dev" | "test" -> image file names, every one of which has captions.
    """

    root: Path
    image_dir: Path
    captions: dict[str, list[str]]
    splits: dict[str, list[str]]

    def image_path(self, name: str) -> Path:
        return self.image_dir / name

    def split(self, name: str) -> list[str]:
        """Image names of split ``name`` ("train", "dev" or "test"); DataError for any other name."""
        if name not in self.splits:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(self.splits)}")
        return list(self.splits[name])

    def available(self, split: str) -> list[str]:
        """Names in ``split`` whose image file exists (a copy may lack some, e.g. the test images)."""
        names = self.split(split)
        present = set(os.listdir(self.image_dir)) if self.image_dir.is_dir() else set()
        return [n for n in names if n in present]

    def references(self, split: str) -> dict[str, list[str]]:
        """``{image name: [captions]}`` for ``split``, the shape caption metrics take."""
        return {name: list(self.captions[name]) for name in self.split(split)}


def load_flickr8k(root: str | Path, image_dir: str | Path | None = None) -> Flickr8k:
    """Read captions and splits from ``root`` in either layout (see the module docstring).

    image_dir: the image folder; by default the first of ``IMAGE_DIRS`` under ``root`` that exists (if none does,
    ``root/Images`` is assumed and ``available`` finds nothing, which is fine for caption-only work).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Flickr8k folder not found: {root}; expected a folder holding {TOKEN_FILE} (original release) or "
            f"{KAGGLE_FILE} (Kaggle) and the images. download_flickr8k(dest) fetches the original release."
        )
    if (root / TOKEN_FILE).is_file():
        captions = _read_token_file(root / TOKEN_FILE)
    elif (root / KAGGLE_FILE).is_file():
        captions = _read_kaggle_file(root / KAGGLE_FILE)
    else:
        raise DataError(
            f"no caption file in {root}: expected {TOKEN_FILE} (lines like {_EXAMPLE_LINE!r}) "
            f"or {KAGGLE_FILE} (CSV with header 'image,caption')"
        )
    splits = _read_split_files(root, captions) or hash_split(captions)
    return Flickr8k(root=root, image_dir=_find_image_dir(root, image_dir), captions=captions, splits=splits)


def hash_split(names: Iterable[str]) -> dict[str, list[str]]:
    """A deterministic train/dev/test split for a folder without split files.

    Names are ordered by sha256(SPLIT_SEED + name) (ties impossible; a stable shuffle that does not depend on the
    Python version or on file order); the first 6000 go to train, the next 1000 to dev and the rest to test. With
    fewer than 8091 images the two sizes shrink in proportion. Each split is returned sorted by name.
    """
    ordered = sorted(names, key=lambda n: hashlib.sha256(f"{SPLIT_SEED}{n}".encode()).hexdigest())
    n = len(ordered)
    n_train = min(TRAIN_SIZE, round(n * TRAIN_SIZE / FLICKR8K_IMAGES))
    n_dev = min(DEV_SIZE, round(n * DEV_SIZE / FLICKR8K_IMAGES))
    parts = ordered[:n_train], ordered[n_train : n_train + n_dev], ordered[n_train + n_dev :]
    return {split: sorted(part) for split, part in zip(SPLITS, parts, strict=True)}


def _fix_name(name: str) -> str:
    name = name.strip()
    match = _QUIRK.match(name)
    return match.group(1) if match else name


def _read_token_file(path: Path) -> dict[str, list[str]]:
    numbered: dict[str, list[tuple[int, str]]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        if not sep:  # some copies use a space instead of the tab
            key, _, caption = line.strip().partition(" ")
        name, _, k = key.strip().rpartition("#")
        if not name or not k.isdigit() or not caption.strip():
            raise DataError(f"{path}:{lineno}: expected a line like {_EXAMPLE_LINE!r}, got {line[:80]!r}")
        numbered.setdefault(_fix_name(name), []).append((int(k), caption.strip()))
    if not numbered:
        raise DataError(f"{path} holds no captions; expected lines like {_EXAMPLE_LINE!r}")
    # Sort by k (stable, so repeated k keep file order): the quirk line can make the file order differ.
    return {name: [c for _, c in sorted(items, key=lambda item: item[0])] for name, items in numbered.items()}


def _read_kaggle_file(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise DataError(
                f"{path} is empty; expected a CSV with header 'image,caption' and one caption per row"
            )
        if [h.strip().lower() for h in header] != ["image", "caption"]:
            raise DataError(f"{path}: expected the header 'image,caption', got {','.join(header)!r}")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            # An unquoted caption with commas arrives as several cells: glue them back.
            name, caption = row[0].strip(), ",".join(row[1:]).strip()
            if not name or not caption:
                raise DataError(
                    f"{path}:{reader.line_num}: expected 'image,caption', got {','.join(row)[:80]!r}"
                )
            captions.setdefault(_fix_name(name), []).append(caption)
    if not captions:
        raise DataError(
            f"{path} holds no captions; expected rows like 'image.jpg,A dog runs .' after the header"
        )
    return captions


def _read_split_files(root: Path, captions: dict[str, list[str]]) -> dict[str, list[str]] | None:
    present = {split: root / name for split, name in SPLIT_FILES.items() if (root / name).is_file()}
    if not present:
        return None
    if len(present) < len(SPLIT_FILES):
        missing = [SPLIT_FILES[s] for s in SPLITS if s not in present]
        raise DataError(
            f"{root} has some split files but not {', '.join(missing)}; provide all three or none "
            "(with none, a deterministic split is made)"
        )
    splits = {}
    for split, path in present.items():
        names = [
            _fix_name(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()
        ]
        orphans = [n for n in names if n not in captions]
        if orphans:
            raise DataError(
                f"{path} lists {len(orphans)} image(s) that have no captions, e.g. {orphans[0]!r}; "
                "the split files and the caption file must come from the same release"
            )
        splits[split] = names
    return splits


def _find_image_dir(root: Path, image_dir: str | Path | None) -> Path:
    if image_dir is not None:
        path = Path(image_dir).expanduser()
        if not path.is_dir():
            raise DataError(f"image folder not found: {path}; pass the folder that holds the .jpg files")
        return path
    return next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])


def download_flickr8k(dest: str | Path, base_url: str = DOWNLOAD_URL) -> Path:
    """Download and unpack the original Flickr8k release (about 1 GB) into ``dest``; returns ``dest``.

    Archives already unpacked are skipped, so an interrupted run can simply be repeated. Needs internet; the
    dataset is licensed for research use only (Hodosh, Young & Hockenmaier 2013).
    """
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for archive, unpacked in ARCHIVES.items():
        if (dest / unpacked).exists():
            continue
        zip_path = dest / archive
        if not zip_path.is_file():
            _download(base_url.rstrip("/") + "/" + archive, zip_path)
        _unpack(zip_path, dest)
        zip_path.unlink()
    return dest


def _download(url: str, path: Path) -> None:
    from tqdm import tqdm  # only the downloader needs it

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, path)  # atomic: a partial download never looks like a finished one
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(
            f"could not download {url} ({e}); check the connection, or fetch it by hand into {path}"
        ) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unpack(zip_path: Path, dest: Path) -> None:
    # Unpack into a hidden folder first and move entries into place, so a crash leaves no half-unpacked tree.
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp, members=[m for m in zf.namelist() if not m.startswith("__MACOSX")])
        for entry in tmp.iterdir():
            if not (dest / entry.name).exists():
                os.replace(entry, dest / entry.name)
    except zipfile.BadZipFile as e:
        zip_path.unlink(missing_ok=True)  # so that the next run downloads it again
        raise DataError(
            f"{zip_path} is not a valid zip archive ({e}); it was deleted, run the download again"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
