import shutil
import zipfile
from pathlib import Path

import pytest

from captioner.data.flickr8k import download_flickr8k, hash_split, load_flickr8k
from captioner.errors import DataError

REAL_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "flickr8k"


def test_original_layout(original_root, captions, tiny):
    ds = load_flickr8k(original_root)
    assert ds.root == original_root and ds.image_dir == original_root / "Images"
    assert ds.captions == captions  # quirk id folded into its image, captions in #k order
    assert not any(".jpg." in name for name in ds.captions)
    assert ds.captions[tiny.quirk][0] == "people waiting for the subway"
    assert ds.splits == {"train": tiny.train, "dev": tiny.dev, "test": tiny.test}
    assert ds.split("dev") == tiny.dev
    assert ds.image_path(tiny.dev[0]) == original_root / "Images" / tiny.dev[0]
    assert ds.image_path(tiny.dev[0]).is_file()
    assert ds.references("test") == {tiny.test[0]: captions[tiny.test[0]]}


def test_available_lists_only_images_on_disk(original_root, tiny):
    ds = load_flickr8k(original_root)
    assert ds.available("train") == tiny.train and ds.available("dev") == tiny.dev
    assert ds.available("test") == []  # like the shared copy, the test images are absent
    (original_root / "Images" / tiny.dev[1]).unlink()
    assert ds.available("dev") == tiny.dev[:1]


def test_unknown_split_raises(original_root):
    ds = load_flickr8k(original_root)
    for call in (ds.split, ds.available, ds.references):
        with pytest.raises(DataError, match="unknown split 'val'"):
            call("val")


def test_image_dir_detection_and_override(original_root, tmp_path, tiny, jpeg):
    (original_root / "Images").rename(original_root / "Flicker8k_Dataset")  # the name inside the original zip
    assert load_flickr8k(original_root).image_dir == original_root / "Flicker8k_Dataset"
    elsewhere = tmp_path / "photos"
    jpeg(elsewhere / tiny.test[0])
    ds = load_flickr8k(original_root, image_dir=elsewhere)
    assert ds.available("test") == tiny.test and ds.available("train") == []
    with pytest.raises(DataError, match="image folder not found"):
        load_flickr8k(original_root, image_dir=tmp_path / "nope")
    shutil.rmtree(original_root / "Flicker8k_Dataset")
    assert load_flickr8k(original_root).available("train") == []  # captions-only use still works


def test_kaggle_layout_makes_a_deterministic_split(kaggle_root, captions, tiny):
    ds = load_flickr8k(kaggle_root)
    assert ds.captions[tiny.quirk][:2] == [
        "people, waiting for the subway",
        "Some people, looking out windows",
    ]
    assert ds.captions[tiny.dev[0]] == captions[tiny.dev[0]]
    assert set(ds.captions) == set(captions)
    # 7 images: 6000/8091 and 1000/8091 of them, rounded
    assert [len(ds.splits[s]) for s in ("train", "dev", "test")] == [5, 1, 1]
    assert sorted(sum(ds.splits.values(), [])) == sorted(captions)
    assert all(names == sorted(names) for names in ds.splits.values())
    assert load_flickr8k(kaggle_root).splits == ds.splits
    assert ds.available("test") == ds.splits["test"]


def test_kaggle_layout_honours_split_files(kaggle_root, tiny):
    for split, names in {"train": tiny.train, "dev": tiny.dev, "test": tiny.test + tiny.unsplit}.items():
        (kaggle_root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names))
    assert load_flickr8k(kaggle_root).splits == {
        "train": tiny.train,
        "dev": tiny.dev,
        "test": tiny.test + tiny.unsplit,
    }


def test_hash_split_matches_the_standard_sizes_and_is_order_independent():
    names = [f"{i:05d}.jpg" for i in range(8091)]
    splits = hash_split(names)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [6000, 1000, 1091]
    assert hash_split(reversed(names)) == splits
    assert {n for part in splits.values() for n in part} == set(names)
    # pinned, so that a change to the rule (which would silently reshuffle users' splits) fails here
    assert splits["dev"][:3] == ["00004.jpg", "00012.jpg", "00020.jpg"]


def test_missing_root_or_caption_file(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nowhere.*Flickr8k\.token\.txt"):
        load_flickr8k(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no caption file in .*captions\.txt"):
        load_flickr8k(tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_caption_files(tmp_path, content):
    (tmp_path / "Flickr8k.token.txt").write_text(content)
    with pytest.raises(DataError, match="holds no captions"):
        load_flickr8k(tmp_path)
    (tmp_path / "Flickr8k.token.txt").unlink()
    (tmp_path / "captions.txt").write_text(content)
    with pytest.raises(DataError, match="is empty"):
        load_flickr8k(tmp_path)
    (tmp_path / "captions.txt").write_text("image,caption\n")
    with pytest.raises(DataError, match="holds no captions"):
        load_flickr8k(tmp_path)


def test_malformed_caption_files_name_the_line(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog .\na.jpg\tno number\n")
    with pytest.raises(DataError, match=r"Flickr8k\.token\.txt:2: expected a line like"):
        load_flickr8k(tmp_path)
    (tmp_path / "Flickr8k.token.txt").unlink()
    (tmp_path / "captions.txt").write_text("file,text\na.jpg,A dog\n")
    with pytest.raises(DataError, match="header 'image,caption'"):
        load_flickr8k(tmp_path)
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A dog\nb.jpg,\n")
    with pytest.raises(DataError, match=r"captions\.txt:3"):
        load_flickr8k(tmp_path)


def test_inconsistent_split_files(original_root, tiny):
    (original_root / "Flickr_8k.trainImages.txt").write_text(f"{tiny.train[0]}\nghost.jpg\n")
    with pytest.raises(DataError, match="trainImages.txt lists 1 image.*'ghost.jpg'"):
        load_flickr8k(original_root)
    (original_root / "Flickr_8k.trainImages.txt").unlink()
    with pytest.raises(DataError, match="not Flickr_8k.trainImages.txt"):
        load_flickr8k(original_root)


def _zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_download_unpacks_and_skips_finished_archives(original_root, tmp_path, tiny):
    # A file:// mirror stands in for GitHub: the code path is the same urllib call, without network.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    text_files = {p.name: p.read_bytes() for p in original_root.glob("*.txt")}
    _zip(mirror / "Flickr8k_text.zip", {**text_files, "__MACOSX/._junk": b"x"})
    images = {f"Flicker8k_Dataset/{p.name}": p.read_bytes() for p in (original_root / "Images").iterdir()}
    _zip(mirror / "Flickr8k_Dataset.zip", images)

    dest = download_flickr8k(tmp_path / "dl", base_url=mirror.as_uri())
    assert sorted(p.name for p in dest.iterdir()) == sorted([*text_files, "Flicker8k_Dataset"])
    ds = load_flickr8k(dest)
    assert ds.available("dev") == tiny.dev and ds.splits["train"] == tiny.train

    shutil.rmtree(mirror)  # nothing left to download: a second run must not try
    assert download_flickr8k(dest, base_url=mirror.as_uri()) == dest


def test_download_errors(tmp_path):
    with pytest.raises(DataError, match="could not download .*Flickr8k_text.zip"):
        download_flickr8k(tmp_path / "dl", base_url=(tmp_path / "missing").as_uri())
    assert list((tmp_path / "dl").iterdir()) == []  # no partial file left
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "Flickr8k_text.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        download_flickr8k(tmp_path / "dl", base_url=mirror.as_uri())
    assert list((tmp_path / "dl").iterdir()) == []


@pytest.mark.data
def test_real_flickr8k():
    if not (REAL_ROOT / "Flickr8k.token.txt").is_file():
        pytest.skip(f"Flickr8k not found at {REAL_ROOT}")
    ds = load_flickr8k(REAL_ROOT)
    assert {s: len(ds.splits[s]) for s in ("train", "dev", "test")} == {
        "train": 6000,
        "dev": 1000,
        "test": 1000,
    }
    assert len(ds.captions) >= 8091
    assert all(len(caps) == 5 for caps in ds.captions.values())
    assert len(ds.captions["2258277193_586949ec62.jpg"]) == 5  # the quirk id is folded in
    assert ds.available("dev") == ds.splits["dev"]
