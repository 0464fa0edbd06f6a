"""Our engine, timed in a fresh process with no TensorFlow: single image, batched, micro-batched, and parts.

    python -m bench.engine run --bundle DIR --photos ... --out engine.json         # a bundle
    python -m bench.engine run --merge DIR --baseline baseline.json --photos ...   # the baseline's own weights
    python -m bench.engine quality --bundle DIR --encoder fp32=a.onnx int8=b.onnx --out quality.json

``run`` measures, end to end from the JPEG file (read, Pillow decode, preprocess, encoder, search, text):
single-image latency (one request at a time), batched throughput (batch 8 and 32), MicroBatcher throughput with
8 concurrent callers, the encoder alone (for the fraction of machine peak), the decoder's share, the image
decoding path, and each encoder variant (int8/fp16) given. Every figure with OpenBLAS on all cores (as loaded)
and again limited to one thread (threadpoolctl), because onnxruntime's spinning threads and OpenBLAS's fight
over the same 2 cores; and once more with onnxruntime's spinning off. ``quality`` captions the dev split with each encoder variant and scores BLEU-4.

The quantised encoders it times are made by the product's ``captioner.encoders.quantize``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.timing import StepTimer, blas_threads, percentiles, rss_peak_mb

SINGLE_REPEATS = 2  # passes over the photos for single-image latency


# -- building the captioner --


def load_captioner(
    bundle: Path | None,
    merge: Path | None,
    encoder: Path | None = None,
    decoder: str | None = None,
    keep_spinning: bool = False,
):
    """A Captioner for a bundle, or for the baseline's original artefacts (caption_model.keras, tokenizer.pkl
    and its InceptionV3 in ONNX), loaded as users load them: ``captioner.load``.

    encoder: another encoder file than the bundle's (a quantised copy). decoder: the decoder step's backend
    (onnx, onnx-int8, numpy; default: the engine's). keep_spinning: onnxruntime's own default, its threads
    spinning on after each run (the engine stops them), for comparison.
    """
    from captioner.encoders.runtime import OnnxEncoder
    from captioner.loading import load
    from captioner.model.backends import DEFAULT_DECODER_BACKEND

    decoder = decoder or DEFAULT_DECODER_BACKEND
    if merge is not None:
        loaded = load(merge, encoder=encoder or merge / "inception_v3.onnx", decoder_backend=decoder)
        if not keep_spinning:
            return loaded
        return loaded.with_encoder(OnnxEncoder(loaded.encoder.path, stop_spinning_after_run=False))
    loaded = load(bundle, decoder_backend=decoder)
    if encoder is None and not keep_spinning:
        return loaded
    # The same bundle with other parts (its label map, consensus memory and calibration kept): a new Captioner
    # sharing them, never one changed in place.
    if keep_spinning and decoder != "numpy":
        from captioner.model.onnx_step import OnnxDecoder

        reference = loaded.decoder.numpy  # the NumpyDecoder under the ONNX step
        spinning = OnnxDecoder(reference, precision=loaded.decoder.precision, stop_spinning_after_run=False)
        loaded = loaded.with_decoder(spinning)
    spin_stop = not keep_spinning
    return loaded.with_encoder(OnnxEncoder(encoder or loaded.encoder.path, stop_spinning_after_run=spin_stop))


# -- measurements --


def single_image(captioner, photos: list[Path], options, repeats: int = SINGLE_REPEATS) -> dict:
    """One request at a time, from the file: latency percentiles and the per-part means."""
    totals, parts = [], {"image": [], "encoder": [], "decoder": []}
    captions = {}
    for _ in range(repeats):
        for p in photos:
            t0 = time.perf_counter()
            image = captioner.load(p.read_bytes())
            t1 = time.perf_counter()
            result = captioner.caption_images([image], options)[0]
            totals.append((time.perf_counter() - t0) * 1000)
            parts["image"].append((t1 - t0) * 1000)
            parts["encoder"].append(result.timings_ms["encoder"])
            parts["decoder"].append(result.timings_ms["decoder"])
            captions[p.name] = result.caption
    return {
        "latency_ms": percentiles(totals),
        "throughput_img_s": 1000.0 / float(np.mean(totals)),
        "parts_ms_mean": {k: float(np.mean(v)) for k, v in parts.items()},
        "captions": captions,
    }


def batched(captioner, photos: list[Path], options, batch_size: int, n_images: int) -> dict:
    """caption_files-style batches of batch_size over n_images (photos repeated): images per second."""
    paths = [photos[i % len(photos)] for i in range(n_images)]
    # One untimed batch first: steady state, not the sessions' first allocations for this batch size.
    captioner.caption_images([captioner.load(p.read_bytes()) for p in paths[:batch_size]], options)
    decoder_ms, encoder_ms = [], []
    t0 = time.perf_counter()
    for s in range(0, n_images, batch_size):
        chunk = [captioner.load(p.read_bytes()) for p in paths[s : s + batch_size]]
        for r in captioner.caption_images(chunk, options):
            decoder_ms.append(r.timings_ms["decoder"])
            encoder_ms.append(r.timings_ms["encoder"])
    wall = time.perf_counter() - t0
    per_image = wall * 1000 / n_images
    return {
        "batch_size": batch_size,
        "n_images": n_images,
        "throughput_img_s": n_images / wall,
        "ms_per_image": per_image,
        "encoder_ms_per_image": float(np.mean(encoder_ms)),
        "decoder_ms_per_image": float(np.mean(decoder_ms)),
        "decoder_share": float(np.mean(decoder_ms)) / per_image,
    }


def micro_batched(
    captioner, photos: list[Path], options, concurrency: int, n_images: int, max_batch: int = 8
) -> dict:
    """MicroBatcher fed by ``concurrency`` closed-loop callers (each decodes its JPEG, submits, waits)."""
    from captioner.decode.microbatch import MicroBatcher

    paths = [photos[i % len(photos)] for i in range(n_images)]
    latencies: list[float] = []
    lock = threading.Lock()
    with MicroBatcher(captioner, max_batch_size=max_batch, max_wait_ms=5.0, max_queue=256) as batcher:

        def one(p: Path) -> None:
            t = time.perf_counter()
            batcher.submit(captioner.load(p.read_bytes()), options).result()
            with lock:
                latencies.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, paths))
        wall = time.perf_counter() - t0
        stats = batcher.stats
    return {
        "concurrency": concurrency,
        "max_batch_size": max_batch,
        "n_images": n_images,
        "throughput_img_s": n_images / wall,
        "latency_ms": percentiles(latencies),
        "mean_batch_size": stats.mean_batch_size,
    }


def encoder_only(encoders: dict, photos: list[Path], repeats: int) -> dict:
    """Encoder run time per image on preprocessed arrays, batch 1 and batch 8, for each named encoder.

    The encoders take turns image by image, so a change in the machine's load hits all of them alike.
    """
    from captioner.encoders.images import load_and_preprocess

    first = next(iter(encoders.values()))
    arrays = np.stack([load_and_preprocess(p, first.preprocessing) for p in photos[:8]])
    b1: dict[str, list[float]] = {name: [] for name in encoders}
    b8: dict[str, list[float]] = {name: [] for name in encoders}
    for encoder in encoders.values():
        encoder.encode_arrays(arrays[:1])
    for i in range(repeats):
        for name, encoder in encoders.items():
            t = time.perf_counter()
            encoder.encode_arrays(arrays[i % len(arrays)][None])
            b1[name].append((time.perf_counter() - t) * 1000)
    for _ in range(max(1, repeats // 8)):
        for name, encoder in encoders.items():
            t = time.perf_counter()
            encoder.encode_arrays(arrays)
            b8[name].append((time.perf_counter() - t) * 1000 / len(arrays))
    return {
        name: {
            "b1_ms": percentiles(b1[name]),
            "b1_ms_best": float(min(b1[name])),
            "b8_ms_per_image": float(np.median(b8[name])),
            "path": str(encoder.path),
            "file_mb": encoder.path.stat().st_size / 1e6,
        }
        for name, encoder in encoders.items()
    }


def decoder_only(captioner, photos: list[Path], options, batch_size: int) -> dict:
    """Search on precomputed features: time in step() vs search overhead, per image."""
    from captioner.decode.search import search

    images = [captioner.load(p) for p in photos]
    features = captioner.encoder.encode(images)
    features = np.concatenate([features] * (batch_size // len(features) + 1))[:batch_size]
    timer = StepTimer(captioner.decoder)
    vocab = captioner.vocabulary
    topk = timer.step_topk
    search(timer.step, timer.initial_state(features), options, vocab.start_id, vocab.end_id, topk)  # warm-up
    timer.seconds = timer.calls = 0
    t = time.perf_counter()
    search(timer.step, timer.initial_state(features), options, vocab.start_id, vocab.end_id, topk)
    wall = time.perf_counter() - t
    return {
        "batch_size": batch_size,
        "ms_per_image": wall * 1000 / batch_size,
        "step_ms_per_image": timer.seconds * 1000 / batch_size,
        "search_overhead_share": 1 - timer.seconds / wall,
        "steps": timer.calls,
    }


def image_path_costs(photos: list[Path], spec, repeats: int = 2) -> dict:
    """ms per image to decode + preprocess: our path (JPEG draft) vs full decode, vs Keras load_img (nearest)."""
    from PIL import Image

    from captioner.encoders.images import load_image, preprocess

    def timed(fn) -> float:
        fn(photos[0])  # warm caches, so the order of the variants does not matter
        t = time.perf_counter()
        for _ in range(repeats):
            for p in photos:
                fn(p)
        return (time.perf_counter() - t) * 1000 / (repeats * len(photos))

    sizes = sorted({Image.open(p).size for p in photos})
    return {
        "photo_sizes": [list(s) for s in sizes[:5]],
        "ours_draft_ms": timed(lambda p: preprocess(load_image(p.read_bytes(), draft_size=spec.size), spec)),
        "no_draft_ms": timed(lambda p: preprocess(load_image(p.read_bytes()), spec)),
        "decode_only_ms": timed(lambda p: load_image(p.read_bytes(), draft_size=spec.size)),
        "nearest_resize_ms": timed(
            lambda p: np.asarray(
                Image.open(p).convert("RGB").resize((spec.size, spec.size), Image.NEAREST), np.float32
            )
        ),
    }


def compare_with_baseline(captioner, baseline: dict, photos: list[Path], max_words: int) -> dict:
    """Same weights? ONNX vs Keras features on one photo, and our merge step vs the Keras loop's tokens."""
    from captioner.decode.options import DecodeOptions
    from captioner.decode.search import search

    ref = baseline["reference_features"]
    photo = next(p for p in photos if p.name == ref["photo"])
    ours = captioner.encoder.encode([captioner.load(photo)])[0]
    keras_features = np.asarray(ref["features"], np.float32)
    feats = np.asarray([r["features"] for r in baseline["requests"]], np.float32)
    vocab = captioner.vocabulary
    greedy = DecodeOptions(strategy="greedy", max_length=max_words)
    hyps = search(
        captioner.decoder.step, captioner.decoder.initial_state(feats), greedy, vocab.start_id, vocab.end_id
    )
    same = [list(h[0].tokens) == r["ids"] for h, r in zip(hyps, baseline["requests"], strict=True)]
    ours_e2e = {r["photo"]: r for r in baseline["requests"]}
    return {
        "encoder_max_abs_diff": float(np.abs(ours - keras_features).max()),
        "encoder_feature_scale": float(np.abs(keras_features).max()),
        "decoder_same_tokens_fraction": float(np.mean(same)),
        "baseline_captions": {k: v["caption"] for k, v in list(ours_e2e.items())[:3]},
    }


def onnx_encoder(path: Path, threads: int | None = None, spinning: bool = True):
    """An OnnxEncoder with ``threads`` intra-op threads; spinning=False: its threads never spin, even during a
    run (onnxruntime's allow_spinning=0), to see what spinning costs on a shared machine."""
    import onnxruntime as ort

    from captioner.encoders.runtime import OnnxEncoder, session_options

    class NoSpinEncoder(OnnxEncoder):  # the product has no such option: its session is built here
        def __init__(self) -> None:
            super().__init__(path, threads)
            opts = session_options(threads)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )

    return NoSpinEncoder() if not spinning else OnnxEncoder(path, threads=threads)


def _with_encoder(captioner, encoder):
    from captioner.decode.captioner import Captioner

    return Captioner(encoder, captioner.decoder, captioner.vocabulary, captioner.info, captioner.max_pixels)


def _with_decoder(captioner, backend: str):
    """The same captioner (same encoder session) with the bundle's decoder step on another backend."""
    import dataclasses

    from captioner.decode.captioner import Captioner
    from captioner.model.backends import step_decoder

    reference = getattr(captioner.decoder, "numpy", captioner.decoder)  # the NumpyDecoder under any backend
    info = dataclasses.replace(captioner.info, decoder_backend=backend)
    return Captioner(
        captioner.encoder, step_decoder(reference, backend), captioner.vocabulary, info, captioner.max_pixels
    )


def decoder_backends(captioner, photos: list[Path], options, n_images: int, quick: bool) -> dict:
    """Each decoder backend on the same encoder (one BLAS thread): search time and end-to-end share, batch 32."""
    out: dict = {}
    captions: dict[str, list[str]] = {}
    for backend in ("numpy", "onnx", "onnx-int8"):
        engine = _with_decoder(captioner, backend)
        with blas_threads(1):
            engine.caption_images([engine.load(photos[0])], options)  # warm-up
            section = {
                "decoder_only_b32_beam3": decoder_only(engine, photos, options, 32),
                "batch32_beam3": batched(engine, photos, options, 32, n_images),
            }
            if not quick:
                section["single_beam3"] = single_image(engine, photos, options, 1)
            captions[backend] = [r.caption for r in engine.caption_files(photos, options)]
        out[backend] = section
    for backend, caps in captions.items():
        out[backend]["same_captions_as_numpy"] = float(
            np.mean([a == b for a, b in zip(caps, captions["numpy"], strict=True)])
        )
    return out


def run(args) -> dict:
    from captioner.decode.options import DecodeOptions

    photos = [Path(p) for p in args.photos]
    # keep_spinning: onnxruntime's default, for comparison: pools spin on after runs
    captioner = load_captioner(args.bundle, args.merge, keep_spinning=args.keep_spinning)
    if args.merge is not None:
        max_length = args.max_words
        beam = DecodeOptions(strategy="beam", beam_size=3, max_length=max_length)
    else:
        beam = DecodeOptions()  # the service's defaults: beam 3, max_length 30
        max_length = beam.max_length
    greedy = DecodeOptions(strategy="greedy", max_length=max_length)
    captioner.caption_images([captioner.load(photos[0])], beam)  # warm-up = ready to serve
    ready_s = time.time() - args.started
    if args.batched_only:  # the reference for the HTTP runs, measured right before each of them
        n_ref = len(photos) if args.quick else 32
        with blas_threads(args.blas_threads):
            return {
                "blas_threads": args.blas_threads,
                "keep_spinning": args.keep_spinning,
                "batch8_beam3": batched(captioner, photos, beam, 8, n_ref),
                "batch32_beam3": batched(captioner, photos, beam, 32, n_ref),
            }
    quick = args.quick
    repeats = 1 if quick else SINGLE_REPEATS
    n_batch = len(photos) if quick else max(96, 2 * len(photos))  # 3 batches of 32: one batch is too noisy
    out: dict = {
        "side": "engine",
        "model": captioner.model_info.to_dict(),
        "encoder": captioner.encoder.name,
        "options": {"beam": beam.to_dict(), "greedy": greedy.to_dict()},
        "cold_start_s": ready_s,
        "rss_ready_mb": rss_peak_mb(),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "torch_imported": "torch" in sys.modules,
        "onnxruntime_threads": captioner.encoder.session.get_session_options().intra_op_num_threads,
        "decoder": type(captioner.decoder).__name__,
        "decoder_backend": captioner.info.decoder_backend,
        "n_photos": len(photos),
    }
    for label, threads in (("blas_default", None), ("blas_1", 1)):
        if quick and threads is not None:
            continue
        with blas_threads(threads):
            out[label] = {
                "single_greedy": single_image(captioner, photos, greedy, repeats),
                "single_beam3": single_image(captioner, photos, beam, repeats),
                "batch8_beam3": batched(captioner, photos, beam, 8, n_batch),
                "batch32_beam3": batched(captioner, photos, beam, 32, n_batch),
                "batch8_greedy": batched(captioner, photos, greedy, 8, n_batch),
                "batch32_greedy": batched(captioner, photos, greedy, 32, n_batch),
                "micro_batched_c8_beam3": micro_batched(captioner, photos, beam, 8, n_batch),
                "decoder_only_b32_beam3": decoder_only(captioner, photos, beam, 32),
                "decoder_only_b1_beam3": decoder_only(captioner, photos, beam, 1),
            }
    out["rss_after_main_mb"] = rss_peak_mb()
    if not quick:
        # onnxruntime's idle threads spin for a while after each run; on a shared machine they steal the cores
        # the NumPy decoder (and the other process) needs. Same engine, spinning off.
        nospin = _with_encoder(captioner, onnx_encoder(captioner.encoder.path, spinning=False))
        with blas_threads(1):
            nospin.caption_images([nospin.load(photos[0])], beam)
            out["blas_1_ort_nospin"] = {
                "single_greedy": single_image(nospin, photos, greedy, repeats),
                "single_beam3": single_image(nospin, photos, beam, repeats),
                "batch32_beam3": batched(nospin, photos, beam, 32, n_batch),
                "batch32_greedy": batched(nospin, photos, greedy, 32, n_batch),
                "micro_batched_c8_beam3": micro_batched(nospin, photos, beam, 8, n_batch),
            }
        del nospin
    encoders = {"fp32": captioner.encoder, "fp32_1_thread": onnx_encoder(captioner.encoder.path, 1)}
    encoders |= {name: onnx_encoder(Path(path)) for name, path in args.variant or []}
    out["encoder_only"] = encoder_only(encoders, photos, 8 if quick else 24)
    reference = captioner.encoder.encode([captioner.load(p) for p in photos[:4]])
    out["variants"] = {}
    for name, variant in encoders.items():
        if name == "fp32_1_thread":
            continue
        feats = variant.encode([captioner.load(p) for p in photos[:4]])
        cos = (feats * reference).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(reference, axis=1))
        out["encoder_only"][name]["cosine_to_fp32"] = float(cos.mean())
        if name == "fp32" and not args.variant:
            continue
        # End to end with this encoder (fp32 again first: a reference measured minutes after the main sections).
        engine = _with_encoder(captioner, variant)
        with blas_threads(1):
            out["variants"][name] = {
                "single_greedy": single_image(engine, photos, greedy, 1),
                "single_beam3": single_image(engine, photos, beam, 1),
                "batch32_greedy": batched(engine, photos, greedy, 32, n_batch),
                "batch32_beam3": batched(engine, photos, beam, 32, n_batch),
            }
    if args.merge is None:
        out["decoder_backends"] = decoder_backends(captioner, photos, beam, n_batch, quick)
    spec = captioner.encoder.preprocessing
    out["image_path"] = {"photos": image_path_costs(photos, spec, repeats)}
    if args.camera_photos:
        out["image_path"]["camera_2000x1500"] = image_path_costs(
            [Path(p) for p in args.camera_photos], spec, 2
        )
    if args.baseline is not None:
        out["same_weights"] = compare_with_baseline(
            captioner, json.loads(Path(args.baseline).read_text()), photos, args.max_words
        )
    out["peak_rss_mb"] = rss_peak_mb()
    return out


def quality(args) -> dict:
    """BLEU-4 (and CIDEr) on the dev split, beam 3: each encoder variant with the bundle's decoder (fp32 ONNX
    step), then each decoder variant (``--decoder NAME=BACKEND``) with the fp32 encoder."""
    from captioner.data.flickr8k import load_flickr8k
    from captioner.decode.options import DecodeOptions
    from captioner.evaluation.metrics import compute_metrics

    data = load_flickr8k(args.data)
    names = sorted(data.available("dev"))[: args.limit]
    refs = data.references("dev")
    options = DecodeOptions()
    out: dict = {"split": "dev", "n_images": len(names), "options": options.to_dict(), "variants": {}}
    fp32_encoder = dict(args.encoder).get("fp32")
    runs = [(name, Path(path), "onnx") for name, path in args.encoder]
    runs += [
        (name, Path(fp32_encoder) if fp32_encoder else None, backend) for name, backend in args.decoder or []
    ]
    for name, encoder_path, backend in runs:
        captioner = load_captioner(args.bundle, None, encoder_path, decoder=backend)
        t = time.perf_counter()
        with blas_threads(1):  # speed only: the captions are the same with any thread count
            results = captioner.caption_files([data.image_path(n) for n in names], options, batch_size=32)
        seconds = time.perf_counter() - t
        hyps = {n: r.caption for n, r in zip(names, results, strict=True)}
        metrics = compute_metrics({n: refs[n] for n in names}, hyps, meteor=False)
        out["variants"][name] = {
            "encoder": str(encoder_path),
            "decoder": backend,
            "BLEU-4": metrics["BLEU-4"],
            "CIDEr": metrics["CIDEr"],
            "seconds": seconds,
            "captions": dict(list(hyps.items())[:5]),
            "_all": hyps,
        }
    base = out["variants"].get("fp32")
    for v in out["variants"].values():
        if base is not None:
            v["BLEU-4_delta"] = v["BLEU-4"] - base["BLEU-4"]
            v["same_caption_fraction"] = float(np.mean([v["_all"][n] == base["_all"][n] for n in names]))
    for v in out["variants"].values():
        v.pop("_all")
    return out


def _pair(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    if not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bundle", type=Path)
    r.add_argument("--merge", type=Path, help="the baseline's artefact folder")
    r.add_argument("--baseline", type=Path, help="baseline.json, to check that the weights are the same")
    r.add_argument("--photos", nargs="+", required=True)
    r.add_argument("--max-words", type=int, default=12)
    r.add_argument("--camera-photos", nargs="*", default=[], help="large JPEGs for the image decoding costs")
    r.add_argument("--variant", type=_pair, action="append", help="NAME=encoder.onnx, e.g. int8=...")
    r.add_argument("--quick", action="store_true")
    r.add_argument("--batched-only", action="store_true", help="only batch 8 and 32, beam 3 (HTTP reference)")
    r.add_argument("--blas-threads", type=int, default=None, help="with --batched-only")
    r.add_argument("--started", type=float, default=None)
    r.add_argument(
        "--keep-spinning",
        action="store_true",
        help="onnxruntime threads spin on after each run (its default)",
    )
    r.add_argument("--out", type=Path, required=True)
    q = sub.add_parser("quality")
    q.add_argument("--bundle", type=Path, required=True)
    q.add_argument("--encoder", type=_pair, nargs="+", required=True)
    q.add_argument("--decoder", type=_pair, nargs="*", help="NAME=BACKEND, e.g. decoder-int8=onnx-int8")
    q.add_argument("--data", type=Path, required=True)
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        args.started = args.started or time.time()
        result = run(args)
    else:
        result = quality(args)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
