"""Evaluate a captioner on a Flickr8k split: caption every image on disk, score, and write a report folder.

out_dir/report.json   metrics, split, image count, decode options, timing, model info, example captions
out_dir/captions.jsonl one line per image: image, caption, references, per-image scores
out_dir/gallery.html  a deterministic sample of images with their captions (see gallery.py)
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from captioner.decode.options import DecodeOptions
from captioner.errors import DataError, OptionsError
from captioner.evaluation.gallery import GalleryItem, write_gallery
from captioner.evaluation.metrics import score_captions

logger = logging.getLogger(__name__)

GALLERY_SEED = 0  # fixed, so two models evaluated on the same split show the same gallery images
NUM_EXAMPLES = 5


class CaptionerLike(Protocol):
    def caption_files(
        self, paths: Sequence[Path], options: DecodeOptions, batch_size: int = 32
    ) -> list[Any]: ...


class DatasetLike(Protocol):
    def available(self, split: str) -> list[str]: ...
    def references(self, split: str) -> dict[str, list[str]]: ...
    def image_path(self, name: str) -> Path: ...


def evaluate(
    captioner: CaptionerLike,
    dataset: DatasetLike,
    split: str,
    options: DecodeOptions,
    out_dir: Path,
    limit: int | None = None,
    gallery_size: int = 24,
    batch_size: int = 32,
    progress: bool = True,
    meteor: bool = True,
) -> dict:
    """Caption the split's images present on disk (the first `limit` by name if given), score them, write the files.

    Returns the report dict that is also written to out_dir/report.json. Raises DataError when no image of the
    split is on disk or an image has no references, OptionsError on a non-positive limit or batch size.
    meteor=False skips the Java METEOR scorer (~6 s start-up), e.g. for quick runs and tests.
    """
    if limit is not None and limit < 1:
        raise OptionsError(f"limit must be at least 1 (or None for the whole split), got {limit}")
    if batch_size < 1:
        raise OptionsError(f"batch_size must be at least 1, got {batch_size}")
    if gallery_size < 0:
        raise OptionsError(f"gallery_size must be 0 or more, got {gallery_size}")
    names = sorted(dataset.available(split))[:limit]
    if not names:
        raise DataError(
            f"no image of the {split!r} split is on disk; download the Flickr8k images or point image_dir at them"
        )
    all_references = dataset.references(split)
    missing = [name for name in names if not all_references.get(name)]
    if missing:
        raise DataError(
            f"{len(missing)} images of the {split!r} split have no reference captions, e.g. {missing[:3]}"
        )
    references = {name: list(all_references[name]) for name in names}

    started = time.perf_counter()
    results = _caption_all(captioner, [dataset.image_path(n) for n in names], options, batch_size, progress)
    caption_s = time.perf_counter() - started
    captions = {name: result.caption for name, result in zip(names, results, strict=True)}
    scores = score_captions(references, captions, meteor=meteor)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "captions.jsonl").open("w", encoding="utf-8") as f:
        for name in names:
            line = {"image": name, "caption": captions[name], "references": references[name]}
            f.write(json.dumps(line | {"scores": scores.per_image[name]}, ensure_ascii=False) + "\n")

    sample = sorted(random.Random(GALLERY_SEED).sample(names, min(gallery_size, len(names))))
    gallery_items = [
        GalleryItem(
            image_path=dataset.image_path(name),
            generated=captions[name],
            references=references[name],
            extra={k: v for k, v in scores.per_image[name].items() if k in ("BLEU-4", "CIDEr")},
        )
        for name in sample
    ]
    title = f"Flickr8k {split}: {options.strategy}" + (
        f" (beam {options.beam_size})" if options.strategy == "beam" else ""
    )
    write_gallery(gallery_items, out_dir, title=title)

    report = {
        "split": split,
        "num_images": len(names),
        "metrics": scores.corpus,
        "options": options.to_dict(),
        "timing": _timing(results, caption_s),
        "model": _model_info(captioner),
        "examples": [
            {"image": n, "caption": captions[n], "references": references[n]} for n in sample[:NUM_EXAMPLES]
        ],
        "scorer": f"pycocoevalcap {_version('pycocoevalcap')}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # default=str: model_info may hold Paths or dates; the report must still be written.
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("evaluated %d %s images: %s", len(names), split, scores.corpus)
    return report


def _model_info(captioner: Any) -> dict | None:
    """The captioner's ModelInfo as a dict (a fake captioner in tests may give a plain dict, or nothing)."""
    info: Any = getattr(captioner, "model_info", None)
    return info.to_dict() if hasattr(info, "to_dict") else (dict(info) if info else None)


def _caption_all(
    captioner: CaptionerLike, paths: list[Path], options: DecodeOptions, batch_size: int, progress: bool
) -> list[Any]:
    results: list[Any] = []
    with tqdm(total=len(paths), desc="captioning", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            batch_results = captioner.caption_files(batch, options, batch_size=batch_size)
            if len(batch_results) != len(batch):
                raise RuntimeError(
                    f"caption_files returned {len(batch_results)} results for {len(batch)} images"
                )
            results.extend(batch_results)
            bar.update(len(batch))
    return results


def _timing(results: list[Any], caption_s: float) -> dict[str, float]:
    """Wall time per image (includes image loading), plus the captioner's own per-stage means when it reports them."""
    timing = {"total_s": round(caption_s, 3), "ms_per_image": round(1000 * caption_s / len(results), 3)}
    stages: dict[str, list[float]] = {}
    for result in results:
        for stage, ms in (getattr(result, "timings_ms", None) or {}).items():
            stages.setdefault(stage, []).append(float(ms))
    for stage, values in stages.items():
        timing[f"{stage}_ms_mean"] = round(sum(values) / len(values), 3)
    return timing


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
