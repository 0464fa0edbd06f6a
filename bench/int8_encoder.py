"""Can the int8 encoder be the default? Calibrate on varied photos, check on photos it never saw.

    python -m bench.int8_encoder [--bundle models/default] [--dev 300] [--test 200] [--out bench/results/int8_encoder.json]

Two int8 copies of the bundle's encoder (``captioner.encoders.quantize``: static QDQ, int8 weights per output
channel, uint8 activations with MinMax ranges):
  flickr8k  calibrated on 32 Flickr8k train photos (what the bench did before)
  varied    calibrated on 48 Flickr8k train photos, 16 of them again darkened / brightened / in grey / with more
            contrast, and half of scikit-image's sample photos (CALIBRATION_SAMPLES)
Checked against float32 on photos no calibration used:
  unlike    the other scikit-image samples, scikit-learn's (china, flower), matplotlib's grace_hopper, and each
            of them darkened, in grey and with more contrast
  flickr8k  ``--test`` Flickr8k dev photos after the first ``--dev`` (this copy has no test photos)
per photo: ImageNet top-1 agreement, top-5 overlap (|top5 int8 & top5 fp32| / 5), whether fp32's top-1 is in
int8's top-5, and the cosine of the caption features; dev BLEU-4 / CIDEr (beam 3, the bundle's decoder) on the
first ``--dev`` dev photos; encoder latency at batch 1 and 32, interleaved.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from bench.http import REPO

FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"
# scikit-image's sample photos: half calibrate, the others are held out with scikit-learn's and matplotlib's.
CALIBRATION_SAMPLES = ("astronaut", "camera", "coins", "brick", "gravel", "moon", "page", "hubble_deep_field",
                       "retina", "motorcycle_left", "immunohistochemistry", "colorwheel")  # fmt: skip
HELD_OUT_SAMPLES = ("chelsea", "coffee", "rocket", "horse", "grass", "text", "cell", "clock", "logo",
                    "motorcycle_right", "checkerboard")  # fmt: skip


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _skimage(name: str) -> Image.Image:
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        array = left if name.endswith("left") else right
    else:
        array = getattr(skimage.data, name)()
    if array.dtype != np.uint8:
        a = array.astype(np.float64)
        array = (255 * (a - a.min()) / max(np.ptp(a), 1e-9)).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _variants(image: Image.Image) -> dict[str, Image.Image]:
    """Photometric changes a served photo may have that Flickr8k's rarely do."""
    return {
        "dark": ImageEnhance.Brightness(image).enhance(0.35),
        "bright": ImageEnhance.Brightness(image).enhance(1.8),
        "grey": ImageOps.grayscale(image).convert("RGB"),
        "contrast": ImageEnhance.Contrast(image).enhance(2.5),
    }


def calibration_set(data) -> list[bytes]:
    train = sorted(data.available("train"))
    photos = [data.image_path(n).read_bytes() for n in train[:: max(len(train) // 48, 1)][:48]]
    for n in train[1 :: max(len(train) // 16, 1)][:16]:
        image = Image.open(data.image_path(n)).convert("RGB")
        photos += [_png(v) for v in _variants(image).values()]
    photos += [_png(_skimage(name)) for name in CALIBRATION_SAMPLES]
    return photos


def unlike_set() -> dict[str, bytes]:
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    images = {f"skimage.{n}": _skimage(n) for n in HELD_OUT_SAMPLES}
    for name, array in zip(("china", "flower"), load_sample_images().images, strict=True):
        images[f"sklearn.{name}"] = Image.fromarray(array)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        images["matplotlib.grace_hopper"] = Image.open(f).convert("RGB")
    out = {}
    for name, image in images.items():
        out[name] = _png(image)
        for kind, v in _variants(image).items():
            if kind != "bright":
                out[f"{name}.{kind}"] = _png(v)
    return out


def agreement(fp32, int8, sources: dict[str, bytes]) -> dict:
    """Per-photo and summary agreement of the two encoders' ImageNet heads and caption features."""
    from captioner.encoders.images import load_image

    rows = {}
    for name, data in sources.items():
        image = load_image(data, draft_size=fp32.preprocessing.size, resize=fp32.preprocessing.resize)
        a, b = fp32.run([image]), int8.run([image])
        top_a, top_b = np.argsort(-a.imagenet_probs[0])[:5], np.argsort(-b.imagenet_probs[0])[:5]
        fa, fb = a.features[0], b.features[0]
        rows[name] = {
            "top1_same": bool(top_a[0] == top_b[0]),
            "top5_overlap": len(set(top_a) & set(top_b)) / 5,
            "fp32_top1_in_int8_top5": bool(top_a[0] in top_b),
            "feature_cosine": float(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb) + 1e-12)),
            "fp32_top1": int(top_a[0]),
            "int8_top1": int(top_b[0]),
            "fp32_top1_prob": float(a.imagenet_probs[0, top_a[0]]),
        }
    v = list(rows.values())
    confident = [r for r in v if r["fp32_top1_prob"] >= 0.5]
    return {
        "n": len(v),
        "top1_agreement": float(np.mean([r["top1_same"] for r in v])),
        "top5_overlap_mean": float(np.mean([r["top5_overlap"] for r in v])),
        "top5_overlap_min": float(np.min([r["top5_overlap"] for r in v])),
        "fp32_top1_in_int8_top5": float(np.mean([r["fp32_top1_in_int8_top5"] for r in v])),
        "top1_agreement_where_fp32_top1_prob_ge_0.5": float(np.mean([r["top1_same"] for r in confident]))
        if confident
        else None,
        "n_fp32_top1_prob_ge_0.5": len(confident),
        "feature_cosine_mean": float(np.mean([r["feature_cosine"] for r in v])),
        "feature_cosine_min": float(np.min([r["feature_cosine"] for r in v])),
        "worst": dict(sorted(rows.items(), key=lambda kv: kv[1]["feature_cosine"])[:5]),
        "photos": rows,
    }


def dev_scores(bundle: Path, encoders: dict[str, Path], data, n: int) -> dict:
    from bench.engine import load_captioner
    from captioner.decode.options import DecodeOptions
    from captioner.evaluation.metrics import compute_metrics

    names = sorted(data.available("dev"))[:n]
    refs = data.references("dev")
    out, hyps = {}, {}
    for name, path in encoders.items():
        captioner = load_captioner(bundle, None, path)
        results = captioner.caption_files([data.image_path(x) for x in names], DecodeOptions(), batch_size=32)
        hyps[name] = {x: r.caption for x, r in zip(names, results, strict=True)}
        m = compute_metrics({x: refs[x] for x in names}, hyps[name], meteor=False)
        out[name] = {"BLEU-4": m["BLEU-4"], "CIDEr": m["CIDEr"]}
    for name in encoders:
        out[name]["BLEU-4_delta"] = out[name]["BLEU-4"] - out["fp32"]["BLEU-4"]
        out[name]["CIDEr_delta"] = out[name]["CIDEr"] - out["fp32"]["CIDEr"]
        out[name]["same_caption_fraction"] = float(np.mean([hyps[name][x] == hyps["fp32"][x] for x in names]))
    return {"n_images": len(names), "options": DecodeOptions().to_dict(), "scores": out}


def latency(encoders: dict, batch: np.ndarray, rounds: int = 5) -> dict:
    """ms per image at batch 1 and 32, the encoders interleaved round by round: median and spread."""
    out: dict = {}
    for size in (1, 32):
        x = batch[:size]
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for enc in encoders.values():
            enc.run_arrays(x)  # warm-up for this shape
        for _ in range(rounds):
            for name, enc in encoders.items():
                reps = 8 if size == 1 else 1
                t = time.perf_counter()
                for _ in range(reps):
                    enc.run_arrays(x)
                times[name].append((time.perf_counter() - t) * 1000 / (reps * size))
        out[f"batch{size}_ms_per_image"] = {
            name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in times.items()
        }
        base = times["fp32"]
        out[f"batch{size}_speedup_vs_fp32"] = {
            name: {
                "median": statistics.median(b / t for b, t in zip(base, v, strict=True)),
                "min": min(b / t for b, t in zip(base, v, strict=True)),
                "max": max(b / t for b, t in zip(base, v, strict=True)),
            }
            for name, v in times.items()
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_encoder")
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--dev", type=int, default=300)
    parser.add_argument("--test", type=int, default=200, help="dev photos for the agreement check")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-int8"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8_encoder.json")
    args = parser.parse_args(argv)

    from captioner.data.flickr8k import load_flickr8k
    from captioner.encoders.images import load_and_preprocess
    from captioner.encoders.quantize import quantize_encoder
    from captioner.encoders.runtime import OnnxEncoder, limit_blas_threads

    limit_blas_threads()
    data = load_flickr8k(FLICKR8K)
    src = args.bundle / "encoder.onnx"
    args.work.mkdir(parents=True, exist_ok=True)
    paths = {
        "fp32": src,
        "int8_flickr8k": args.work / "int8_flickr8k.onnx",
        "int8_varied": args.work / "int8_varied.onnx",
    }
    t = time.perf_counter()
    if not paths["int8_flickr8k"].is_file():
        train = sorted(data.available("train"))[:32]
        quantize_encoder(src, paths["int8_flickr8k"], "int8", [data.image_path(n) for n in train])
    calibration = calibration_set(data)
    if not paths["int8_varied"].is_file():
        quantize_encoder(src, paths["int8_varied"], "int8", calibration)
    quantize_s = time.perf_counter() - t
    print(f"quantised in {quantize_s:.0f} s", flush=True)

    encoders = {name: OnnxEncoder(p) for name, p in paths.items()}
    unlike = unlike_set()
    dev = sorted(data.available("dev"))  # the test photos are not in this copy of Flickr8k
    test = {n: data.image_path(n).read_bytes() for n in dev[args.dev : args.dev + args.test]}
    checks = {}
    for name in ("int8_flickr8k", "int8_varied"):
        checks[name] = {
            "unlike_flickr8k": agreement(encoders["fp32"], encoders[name], unlike),
            "flickr8k_dev": agreement(encoders["fp32"], encoders[name], test),
        }
        for part in checks[name].values():
            part.pop("photos")
        print(
            name,
            json.dumps(
                {k: {m: v for m, v in part.items() if m != "worst"} for k, part in checks[name].items()}
            ),
            flush=True,
        )
    spec = encoders["fp32"].preprocessing
    test_paths = [data.image_path(n) for n in dev[:32]]
    batch = np.stack([load_and_preprocess(p, spec) for p in test_paths])
    speed = latency(encoders, batch)
    print(json.dumps(speed), flush=True)
    scores = dev_scores(args.bundle, paths, data, args.dev)
    print(json.dumps(scores), flush=True)
    out = {
        "what": "int8 (static QDQ, per-channel weights) vs float32 encoder of the bundle; see bench/int8_encoder.py",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "calibration": {
            "int8_flickr8k": "32 Flickr8k train photos",
            "int8_varied": f"{len(calibration)} images: 48 Flickr8k train photos, 16 more x (dark, bright, grey, "
            f"contrast), scikit-image samples {list(CALIBRATION_SAMPLES)}",
        },
        "held_out_unlike_flickr8k": sorted(unlike),
        "sizes_mb": {name: p.stat().st_size / 1e6 for name, p in paths.items()},
        "agreement": checks,
        "latency": speed,
        "dev": scores,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
