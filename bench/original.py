"""The original design's artefacts served by our engine vs the original loop on the same artefacts, same run.

    python -m bench.original [--photos 12] [--baseline-photos 8] [--max-words 20] [--out bench/results/original.json]

Artefacts (bench/baseline.py build, cached in --work): a random-weight InceptionV3 (Keras weights, and its
``captioner export-encoder`` ONNX copy), the tutorial's merge ``caption_model.keras`` and a Keras ``tokenizer.pkl``
fitted on the Flickr8k training captions. The merge model never predicts endseq (bias -50), so both sides write
exactly ``--max-words`` words per caption, greedy.

  original  bench/baseline.py run: TensorFlow, one request at a time, predict per word over the padded prefix
  engine    ``captioner.load(ARTEFACTS)`` as a user would call it (no TensorFlow or Keras in the process):
            single image one at a time (p50) and batches of 32 (throughput), the default decoder backend

Targets: engine/original >= 10x for throughput and for p50. Each side runs in its own process, one after the
other, so TensorFlow never shares a process with our engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

TARGET_X = 10.0


def engine_side(args) -> dict:
    """Our engine on the original artefacts: single-image latency, batch-32 throughput, same tokens?"""
    from bench.engine import batched, compare_with_baseline, rss_peak_mb, single_image
    from captioner.decode.options import DecodeOptions
    from captioner.encoders.runtime import limit_blas_threads
    from captioner.loading import load

    limit_blas_threads()  # the edge: this process runs onnxruntime
    photos = [Path(p) for p in args.photos]
    captioner = load(args.artefacts, encoder=args.artefacts / "inception_v3.onnx")
    greedy = DecodeOptions(strategy="greedy", max_length=args.max_words)
    captioner.caption_images([captioner.load(photos[0])], greedy)  # warm-up = ready to serve
    ready_s = time.time() - args.started
    baseline = json.loads(args.baseline.read_text())
    n_batch = max(96, 2 * len(photos))
    out = {
        "side": "engine",
        "model": captioner.model_info.to_dict(),
        "cold_start_s": ready_s,
        "single_greedy": single_image(captioner, photos, greedy, repeats=2),
        "batch32_greedy": batched(captioner, photos, greedy, 32, n_batch),
        "same_as_original": compare_with_baseline(captioner, baseline, photos, args.max_words),
        "fp32_same_as_original": compare_with_baseline(
            load(args.artefacts, encoder=args.artefacts / "inception_v3.onnx", decoder_backend="onnx"),
            baseline,
            photos,
            args.max_words,
        ),  # fmt: skip
        "tensorflow_imported": "tensorflow" in sys.modules,
        "keras_imported": "keras" in sys.modules,
        "peak_rss_mb": rss_peak_mb(),
    }
    return out


def summarize(original: dict, engine: dict, max_words: int) -> dict:
    p50_original = original["latency_ms"]["p50"]
    p50_engine = engine["single_greedy"]["latency_ms"]["p50"]
    thr_original = original["throughput_img_s"]
    thr_engine = engine["batch32_greedy"]["throughput_img_s"]
    ratios = {"p50_x": p50_original / p50_engine, "throughput_x": thr_engine / thr_original}
    return {
        "words_per_caption": max_words,
        "original": {
            "p50_ms": p50_original,
            "throughput_img_s": thr_original,
            "n_images": original["n_images"],
        },
        "engine": {
            "p50_ms": p50_engine,
            "single_throughput_img_s": engine["single_greedy"]["throughput_img_s"],
            "throughput_img_s": thr_engine,
            "decoder_backend": engine["model"]["decoder_backend"],
            "tensorflow_imported": engine["tensorflow_imported"],
        },
        "ratios": ratios,
        "targets": {name: {"target_x": TARGET_X, "met": bool(x >= TARGET_X)} for name, x in ratios.items()},
        "same_tokens_fraction": {
            "default_backend": engine["same_as_original"]["decoder_same_tokens_fraction"],
            "onnx_fp32": engine["fp32_same_as_original"]["decoder_same_tokens_fraction"],
        },
    }


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import REPO, _log, _python, select_photos

    parser = argparse.ArgumentParser(prog="python -m bench.original", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=12, help="photos our engine captions")
    parser.add_argument(
        "--baseline-photos", type=int, default=8, help="photos the (slow) original loop captions"
    )
    parser.add_argument("--max-words", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "original.json")
    parser.add_argument(
        "--work", type=Path, default=REPO / "cache" / "bench", help="artefacts and raw outputs"
    )
    sub = parser.add_subparsers(dest="side")
    e = sub.add_parser("engine", help="(internal) our engine's side, in its own process")
    e.add_argument("--artefacts", type=Path, required=True)
    e.add_argument("--baseline", type=Path, required=True)
    e.add_argument("--photos", nargs="+", required=True)
    e.add_argument("--max-words", type=int, default=20)
    e.add_argument("--started", type=float, required=True)
    e.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.side == "engine":
        args.out.write_text(json.dumps(engine_side(args), indent=1))
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    art = args.work / "inception_v3"
    if not (art / "meta.json").is_file() or not (art / "inception_v3.weights.h5").is_file():
        _log("building the original artefacts (random InceptionV3, merge caption_model.keras, tokenizer.pkl)")
        _python("bench.baseline", "build", str(art))
    if not (art / "inception_v3.onnx").is_file():
        _log("exporting that InceptionV3 to ONNX (~1 min)")
        _python("captioner", "export-encoder", "inception_v3", "--out", str(art / "inception_v3.onnx"),
                "--weights", str(art / "inception_v3.weights.h5"))  # fmt: skip
    photos = select_photos(args.photos, args.work)
    raw: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_avg_start": list(os.getloadavg())}
    base_out, engine_out = args.work / "original_baseline.json", args.work / "original_engine.json"
    _log(
        f"original loop (TensorFlow) on {args.baseline_photos} photos, {args.max_words} words, one at a time"
    )
    _python("bench.baseline", "run", str(art), "--out", str(base_out), "--max-words", str(args.max_words),
            "--started", repr(time.time()), "--photos", *map(str, photos[: args.baseline_photos]))  # fmt: skip
    _log(f"our engine on the same artefacts (captioner.load) on {len(photos)} photos")
    _python("bench.original", "engine", "--artefacts", str(art), "--baseline", str(base_out),
            "--max-words", str(args.max_words), "--started", repr(time.time()), "--out", str(engine_out),
            "--photos", *map(str, photos))  # fmt: skip
    original, engine = json.loads(base_out.read_text()), json.loads(engine_out.read_text())
    for r in original["requests"]:
        r.pop("features", None)
    original.pop("reference_features", None)
    raw |= {"original": original, "engine": engine, "load_avg_end": list(os.getloadavg())}
    summary = summarize(original, engine, args.max_words)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "raw": raw}, indent=1, default=float) + "\n")
    print(json.dumps(summary, indent=1))
    _log(f"wrote {args.out}")
    return 0 if all(t["met"] for t in summary["targets"].values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
