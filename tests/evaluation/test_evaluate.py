import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from captioner.decode.options import DecodeOptions
from captioner.errors import DataError, OptionsError
from captioner.evaluation.evaluate import evaluate

SCRIPT = "<script>alert('x')</script> a dog"


@dataclass
class FakeDataset:
    image_dir: Path
    captions: dict[str, list[str]]
    on_disk: list[str] = field(default_factory=list)

    def available(self, split: str) -> list[str]:
        return list(self.on_disk)

    def references(self, split: str) -> dict[str, list[str]]:
        return self.captions

    def image_path(self, name: str) -> Path:
        return self.image_dir / name


@dataclass(frozen=True)
class FakeResult:
    caption: str
    timings_ms: dict[str, float]


class FirstReferenceCaptioner:
    """Captions each image with its first reference, so every metric is known: BLEU-4 == 1."""

    model_info = {"name": "fake", "encoder": "none"}

    def __init__(self, dataset: FakeDataset):
        self.answers = {dataset.image_path(n): refs[0] for n, refs in dataset.captions.items()}
        self.batches: list[int] = []

    def caption_files(self, paths, options, batch_size=32):
        self.batches.append(len(paths))
        return [FakeResult(self.answers[Path(p)], {"encoder": 2.0, "decoder": 4.0}) for p in paths]


@pytest.fixture
def dataset(tmp_path) -> FakeDataset:
    captions = {
        "a.jpg": [SCRIPT, "a dog plays"],
        "b.jpg": ["two kids swim in a pool", "children in the water"],
        "c.jpg": ["a man rides a red bike", "a cyclist on a road"],
        "d.jpg": ["a cat sleeps on a sofa", "a sleeping cat"],
        "e.jpg": ["never downloaded", "not on disk"],
    }
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    on_disk = ["d.jpg", "c.jpg", "b.jpg", "a.jpg"]
    for i, name in enumerate(on_disk):
        Image.new("RGB", (64 + 16 * i, 48), (40 * i, 100, 200)).save(image_dir / name, "JPEG")
    return FakeDataset(image_dir, captions, on_disk)


def test_evaluate_writes_report_captions_and_gallery(dataset, tmp_path):
    captioner = FirstReferenceCaptioner(dataset)
    options = DecodeOptions(strategy="greedy", beam_size=1)
    out = tmp_path / "out"
    report = evaluate(captioner, dataset, "test", options, out, batch_size=3, progress=False, meteor=False)

    assert captioner.batches == [3, 1]
    assert json.loads((out / "report.json").read_text()) == report
    assert report["split"] == "test" and report["num_images"] == 4
    assert report["metrics"]["BLEU-4"] == pytest.approx(1.0)
    assert report["metrics"]["CIDEr"] > 0
    assert "METEOR" not in report["metrics"]
    assert report["options"] == options.to_dict()
    assert report["model"] == {"name": "fake", "encoder": "none"}
    assert report["timing"]["encoder_ms_mean"] == 2.0 and report["timing"]["ms_per_image"] >= 0
    assert {"image", "caption", "references"} <= set(report["examples"][0])

    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert lines[1]["caption"] == "two kids swim in a pool"
    assert lines[1]["references"] == dataset.captions["b.jpg"]
    assert lines[1]["scores"]["BLEU-4"] == pytest.approx(1.0)

    page = (out / "gallery.html").read_text()
    assert page.count('<figure class="card">') == 4
    assert page.count("data:image/jpeg;base64,") == 4
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page


def test_limit_and_gallery_size(dataset, tmp_path):
    report = evaluate(
        FirstReferenceCaptioner(dataset),
        dataset,
        "test",
        DecodeOptions(),
        tmp_path / "out",
        limit=2,
        gallery_size=1,
        progress=False,
        meteor=False,
    )
    assert report["num_images"] == 2
    lines = (tmp_path / "out" / "captions.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == ["a.jpg", "b.jpg"]
    assert (tmp_path / "out" / "gallery.html").read_text().count('<figure class="card">') == 1


def test_gallery_sample_is_deterministic(dataset, tmp_path):
    runs = [
        evaluate(
            FirstReferenceCaptioner(dataset),
            dataset,
            "test",
            DecodeOptions(),
            tmp_path / str(i),
            gallery_size=2,
            progress=False,
            meteor=False,
        )["examples"]
        for i in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0]) == 2


def test_no_images_on_disk_is_a_data_error(dataset, tmp_path):
    dataset.on_disk = []
    with pytest.raises(DataError, match="no image"):
        evaluate(FirstReferenceCaptioner(dataset), dataset, "test", DecodeOptions(), tmp_path, progress=False)


def test_image_without_references_is_a_data_error(dataset, tmp_path):
    captioner = FirstReferenceCaptioner(dataset)
    dataset.captions["a.jpg"] = []
    with pytest.raises(DataError, match="no reference captions"):
        evaluate(captioner, dataset, "test", DecodeOptions(), tmp_path, progress=False)


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"batch_size": 0}, {"gallery_size": -1}])
def test_bad_arguments_raise(dataset, tmp_path, kwargs):
    with pytest.raises(OptionsError):
        evaluate(FirstReferenceCaptioner(dataset), dataset, "test", DecodeOptions(), tmp_path, **kwargs)


def test_unreadable_image_gets_a_placeholder(dataset, tmp_path):
    (dataset.image_dir / "c.jpg").write_bytes(b"not an image")
    evaluate(
        FirstReferenceCaptioner(dataset),
        dataset,
        "test",
        DecodeOptions(),
        tmp_path / "o",
        progress=False,
        meteor=False,
    )
    assert "image unavailable" in (tmp_path / "o" / "gallery.html").read_text()
