"""Does the caption confidence mean something? Rank correlation with each caption's own CIDEr, reliability table.

    python -m captioner.evaluation.confidence --split dev --out bench/results/confidence.json

Captions every image of the split as served (default bundle and decoder backend, default DecodeOptions), scores
each caption against its own references (pycocoevalcap CIDEr over the split, per image) and reports the Spearman
rank correlation between confidence and CIDEr, and mean CIDEr per confidence bin.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

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


def reliability_table(confidence: Sequence[float], quality: Sequence[float], bins: int = 10) -> list[dict]:
    """Equal-width confidence bins over [0, 1]: count, mean confidence and mean quality per non-empty bin."""
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
    return rows


def confidence_report(
    captioner, dataset, split: str, options: DecodeOptions, limit: int | None = None
) -> dict:
    """Caption the split's images on disk, score each caption, and relate the confidences to the scores."""
    names = sorted(dataset.available(split))[:limit]
    references = dataset.references(split)
    started = time.perf_counter()
    results = captioner.caption_files([dataset.image_path(n) for n in names], options)
    caption_s = time.perf_counter() - started
    captions = {n: r.caption for n, r in zip(names, results, strict=True)}
    scores = score_captions({n: references[n] for n in names}, captions, meteor=False)
    cider = [scores.per_image[n]["CIDEr"] for n in names]
    conf = [r.confidence for r in results]
    log_prob = [r.candidates[0].log_prob if r.candidates else 0.0 for r in results]
    words = [len(r.caption.split()) for r in results]
    return {
        "split": split,
        "num_images": len(names),
        "options": options.to_dict(),
        "model": {
            k: v for k, v in captioner.model_info.items() if k in ("version", "encoder", "decoder_backend")
        },
        "confidence": "geometric mean of the best caption's token probabilities (decode/confidence.py)",
        "spearman_confidence_vs_cider": round(spearman(conf, cider), 4),
        # For comparison: the raw summed log-probability favours short captions.
        "spearman_log_prob_vs_cider": round(spearman(log_prob, cider), 4),
        "spearman_words_vs_cider": round(spearman(words, cider), 4),
        "corpus_cider": round(scores.corpus["CIDEr"], 4),
        "mean_confidence": round(float(np.mean(conf)), 4),
        "reliability": reliability_table(conf, cider),
        "quartiles": _quartiles(conf, cider),
        "caption_s": round(caption_s, 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


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
    from captioner.decode.captioner import Captioner

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../../shared/data/flickr8k"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/confidence.json"))
    args = parser.parse_args(argv)
    captioner = Captioner.from_bundle(args.bundle)
    report = confidence_report(captioner, load_flickr8k(args.data), args.split, DecodeOptions(), args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "reliability"}, indent=2))


if __name__ == "__main__":
    main()
