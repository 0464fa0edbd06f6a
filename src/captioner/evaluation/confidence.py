"""Does the caption confidence mean something? Rank correlation with each caption's own CIDEr, reliability table.

    python -m captioner.evaluation.confidence --split dev --out bench/results/confidence.json

Fits the confidence calibration on random training images (decode/confidence.py; --write-bundle stores it in the
bundle's manifest), then captions every image of the evaluation split as served (default bundle and decoder
backend, default DecodeOptions), scores each caption against its own references (pycocoevalcap CIDEr over the
split, per image) and reports the Spearman rank correlation between confidence and CIDEr, and mean CIDEr (and the
share of captions as good as a typical human one) per confidence bin.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from captioner.data.text import normalize_caption
from captioner.decode.confidence import Calibration
from captioner.decode.options import DecodeOptions
from captioner.evaluation.metrics import score_captions


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x[np.r_[False, np.diff(x[order]) == 0]]) if len(x) else []:
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two equal-length sequences (NaN if either is constant)."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def reliability_table(
    confidence: Sequence[float], quality: Sequence[float], bins: int = 10, threshold: float | None = None
) -> list[dict]:
    """Equal-width confidence bins over [0, 1]: count, mean confidence and mean quality per non-empty bin (and
    the share of captions with quality >= ``threshold``, which a calibrated confidence should match)."""
    c, q = np.asarray(confidence, np.float64), np.asarray(quality, np.float64)
    which = np.minimum((c * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append(
                {
                    "bin": [round(b / bins, 3), round((b + 1) / bins, 3)],
                    "count": int(mask.sum()),
                    "mean_confidence": round(float(c[mask].mean()), 4),
                    "mean_cider": round(float(q[mask].mean()), 4),
                    "median_cider": round(float(np.median(q[mask])), 4),
                }
            )
            if threshold is not None:
                rows[-1]["share_good"] = round(float((q[mask] >= threshold).mean()), 4)
    return rows


def human_cider(references: Mapping[str, Sequence[str]]) -> list[float]:
    """Leave-one-out CIDEr of the human captions: each reference scored against the image's other references
    (pycocoevalcap Cider over all the images, captions normalised as for the model's). One value per caption."""
    from pycocoevalcap.cider.cider import Cider

    refs = {k: [t for t in map(normalize_caption, v) if t] for k, v in sorted(references.items())}
    refs = {k: v for k, v in refs.items() if len(v) >= 2}
    out: list[float] = []
    for j in range(max(len(v) for v in refs.values())):
        keys = [k for k, v in refs.items() if len(v) > j]
        others = {k: refs[k][:j] + refs[k][j + 1 :] for k in keys}
        _, scores = Cider().compute_score(others, {k: [refs[k][j]] for k in keys})
        out += [float(x) for x in scores]
    return out


def caption_and_score(captioner, dataset, split: str, options: DecodeOptions, names: Sequence[str]) -> dict:
    """Caption ``names`` of ``split`` with the raw (uncalibrated) confidence and score each caption's CIDEr."""
    references = dataset.references(split)
    calibration, captioner.calibration = captioner.calibration, None  # this run measures the raw value
    try:
        started = time.perf_counter()
        results = captioner.caption_files([dataset.image_path(n) for n in names], options)
        seconds = time.perf_counter() - started
    finally:
        captioner.calibration = calibration
    captions = {n: r.caption for n, r in zip(names, results, strict=True)}
    scores = score_captions({n: references[n] for n in names}, captions, meteor=False)
    return {
        "raw": [r.confidence for r in results],
        "cider": [scores.per_image[n]["CIDEr"] for n in names],
        "log_prob": [r.candidates[0].log_prob if r.candidates else 0.0 for r in results],
        "words": [len(r.caption.split()) for r in results],
        "corpus_cider": scores.corpus["CIDEr"],
        "seconds": seconds,
    }


def fit_calibration(
    captioner, dataset, split: str, options: DecodeOptions, limit: int, seed: int = 0
) -> dict:
    """Fit the Calibration on ``limit`` random images of ``split`` (train: dev is for evaluation).

    Outcome per caption: its CIDEr >= the median leave-one-out CIDEr of the split's human captions. The
    captions are the served ones (``options``: label constraint, consensus reranking with the photo itself left out
    of the memory).
    """
    names = sorted(dataset.available(split))
    names = sorted(random.Random(seed).sample(names, min(limit, len(names))))
    human = human_cider({n: dataset.references(split)[n] for n in names})
    threshold = float(np.median(human))
    # The consensus memory holds the training photos: captioned as if unseen, a photo must not rerank with its
    # own references (it would look far better than on a new photo).
    memory = getattr(captioner, "consensus", None)
    if memory is not None:
        captioner.consensus = memory.leave_one_out()
    try:
        run = caption_and_score(captioner, dataset, split, options, names)
    finally:
        if memory is not None:
            captioner.consensus = memory
    good = [float(c >= threshold) for c in run["cider"]]
    calibration = Calibration.fit(run["raw"], good)
    return {
        "calibration": calibration,
        "record": {
            **calibration.to_dict(),
            "meaning": "fraction of training captions with this raw confidence whose CIDEr reached the median "
            "leave-one-out CIDEr of the human captions",
            "cider_threshold": round(threshold, 4),
            "split": split,
            "images": len(names),
            "seed": seed,
            "options": options.to_dict(),
            "share_good": round(float(np.mean(good)), 4),
        },
    }


def confidence_report(
    captioner,
    dataset,
    split: str,
    options: DecodeOptions,
    limit: int | None = None,
    calibration=None,
    threshold=None,
) -> dict:
    """Caption the split's images on disk, score each caption, and relate the confidences to the scores."""
    names = sorted(dataset.available(split))[:limit]
    run = caption_and_score(captioner, dataset, split, options, names)
    raw, cider = run["raw"], run["cider"]
    report = {
        "split": split,
        "num_images": len(names),
        "options": options.to_dict(),
        "model": {
            k: v
            for k, v in captioner.model_info.to_dict().items()
            if k in ("version", "encoder", "decoder_backend", "decoders")
        },
        "raw_confidence": "geometric mean of the best caption's token probabilities (decode/confidence.py)",
        "spearman_raw_confidence_vs_cider": round(spearman(raw, cider), 4),
        # For comparison: the summed log-probability favours short captions; length alone.
        "spearman_log_prob_vs_cider": round(spearman(run["log_prob"], cider), 4),
        "spearman_words_vs_cider": round(spearman(run["words"], cider), 4),
        "corpus_cider": round(run["corpus_cider"], 4),
        "mean_raw_confidence": round(float(np.mean(raw)), 4),
        "reliability_raw": reliability_table(raw, cider),
        "quartiles_raw": _quartiles(raw, cider),
        "caption_s": round(run["seconds"], 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if calibration is not None:
        conf = [calibration(x) for x in raw]
        report["spearman_confidence_vs_cider"] = round(spearman(conf, cider), 4)
        report["mean_confidence"] = round(float(np.mean(conf)), 4)
        report["reliability"] = reliability_table(conf, cider, threshold=threshold)
        if threshold is not None:
            report["share_good"] = round(float(np.mean(np.asarray(cider) >= threshold)), 4)
    return report


def _quartiles(confidence: Sequence[float], quality: Sequence[float]) -> list[dict]:
    """Mean CIDEr of the captions in each confidence quartile (equal counts: robust to a narrow spread)."""
    c, q = np.asarray(confidence), np.asarray(quality)
    order = np.argsort(c, kind="stable")
    return [
        {
            "quartile": i + 1,
            "confidence_range": [round(float(c[part].min()), 4), round(float(c[part].max()), 4)],
            "mean_cider": round(float(q[part].mean()), 4),
        }
        for i, part in enumerate(np.array_split(order, 4))
        if len(part)
    ]


def main(argv: list[str] | None = None) -> None:
    from captioner.data.flickr8k import load_flickr8k
    from captioner.loading import load
    from captioner.model.bundle import DEFAULT_BUNDLE, MANIFEST_FILE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../../shared/data/flickr8k"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument(
        "--fit-split", default="train", help="fit the calibration here ('' : use the bundle's)"
    )
    parser.add_argument("--fit-limit", type=int, default=2000)
    parser.add_argument(
        "--write-bundle", action="store_true", help="store the fitted calibration in the manifest"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/confidence.json"))
    args = parser.parse_args(argv)
    captioner = load(args.bundle)
    dataset, options = load_flickr8k(args.data), DecodeOptions()
    fitted = None
    if args.fit_split:
        fitted = fit_calibration(captioner, dataset, args.fit_split, options, args.fit_limit)
        if args.write_bundle:
            path = (args.bundle or DEFAULT_BUNDLE) / MANIFEST_FILE
            manifest = json.loads(path.read_text())
            manifest["confidence_calibration"] = fitted["record"]
            path.write_text(json.dumps(manifest, indent=2) + "\n")  # the manifest itself is not checksummed
    from captioner.model.bundle import load_bundle

    record = fitted["record"] if fitted else load_bundle(args.bundle).manifest.get("confidence_calibration")
    calibration = fitted["calibration"] if fitted else captioner.calibration
    threshold = record.get("cider_threshold") if record else None
    report = confidence_report(captioner, dataset, args.split, options, args.limit, calibration, threshold)
    if record:
        report["calibration"] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in report.items() if "reliability" not in k and k != "calibration"}, indent=2
        )
    )


if __name__ == "__main__":
    main()
