"""Serving cost of the decoding-time quality features (label constraint, consensus reranking) in one run.

The same bundle and photos, each round timing "before" (both features off: the previous default) and "after" (the
defaults) back to back: single-image p50 (decode + encoder + search, one photo at a time) and batch-32
throughput. Issue 15's budget: after/before single p50 <= 1.3, batch-32 throughput after/before >= 0.75.

    PYTHONPATH=src:. python -m bench.quality_cost [--rounds 5] [--photos 32]

Writes bench/results/quality_cost.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.engine import batched, single_image
from captioner.encoders.runtime import limit_blas_threads

OUT = Path(__file__).parent / "results" / "quality_cost.json"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"


def main(argv: list[str] | None = None) -> None:
    import captioner
    from captioner.data.flickr8k import load_flickr8k
    from captioner.decode.options import DecodeOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--data-root", type=Path, default=DATA)
    args = parser.parse_args(argv)
    limit_blas_threads()  # as the service does at startup
    dataset = load_flickr8k(args.data_root)
    photos = [dataset.image_path(n) for n in dataset.available("dev")[: args.photos]]
    engine = captioner.load()
    after = DecodeOptions()
    before = replace(after, label_constraint=False, consensus_neighbours=0)
    rounds: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for name, options in (("before", before), ("after", after)):
            single = single_image(engine, photos, options, repeats=1)
            batch = batched(engine, photos, options, batch_size=32, n_images=len(photos) * 2)
            rounds[name].append(
                {"single_p50_ms": single["latency_ms"]["p50"], "b32_img_s": batch["throughput_img_s"]}
            )

    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in rounds[name]]))

    ratios = [
        {"single_p50": a["single_p50_ms"] / b["single_p50_ms"], "b32": a["b32_img_s"] / b["b32_img_s"]}
        for a, b in zip(rounds["after"], rounds["before"], strict=True)
    ]
    summary = {
        "before_single_p50_ms": median("before", "single_p50_ms"),
        "after_single_p50_ms": median("after", "single_p50_ms"),
        "before_b32_img_s": median("before", "b32_img_s"),
        "after_b32_img_s": median("after", "b32_img_s"),
        "single_p50_after_over_before": float(np.median([r["single_p50"] for r in ratios])),
        "b32_after_over_before": float(np.median([r["b32"] for r in ratios])),
    }
    report = {
        "what": "issue 15 serving budget: single p50 after/before <= 1.3, batch-32 throughput after/before >= 0.75",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "before": before.to_dict(),
        "after": after.to_dict(),
        "photos": len(photos),
        "rounds": rounds,
        "summary": summary,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
