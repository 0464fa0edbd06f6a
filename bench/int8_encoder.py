"""Can the int8 encoder be the default? Calibrate on varied photos, check on photos it never saw.

    python -m bench.int8_encoder [--bundle models/default] [--dev 1000] [--test 200] [--out bench/results/int8_encoder.json]
                                 [--bundle-out DIR]   # also: the bundle with the int8 encoder, for bench.item8

Four int8 copies of the bundle's encoder (``captioner.encoders.quantize``: static QDQ, int8 weights per output
channel, uint8 activations with MinMax ranges):
  int8           the default: calibrated on varied photos (below), the first 3 convolutions kept float32
  int8_all       the same calibration, every convolution quantised (the default before 2026-11-26)
  int8_flickr8k  the default's float head, calibrated on 32 Flickr8k train photos only
  int8_7bit      the default with 7-bit weights (``seven_bit_weights``, for CPUs without VNNI)
"varied" calibration: 48 Flickr8k train photos, 16 of them again darkened / brightened / in grey / with more
contrast, and half of scikit-image's sample photos (CALIBRATION_SAMPLES).
And a yardstick: fp32_jpeg, the float32 encoder itself on each photo saved again as a JPEG (quality 90): how much
an imperceptible change of the input moves the same answers.
Checked against float32 on photos no calibration used:
  unlike    the other scikit-image samples, scikit-learn's (china, flower), matplotlib's grace_hopper, and each
            of them darkened, in grey and with more contrast
  flickr8k  the first ``--test`` Flickr8k dev photos (this copy has no test photos; no calibration used dev)
per photo: ImageNet top-1 agreement, top-5 overlap (|top5 int8 & top5 fp32| / 5), whether fp32's top-1 is in
int8's top-5, the cosine of the caption features, and what a user gets (default DecodeOptions and answer tags):
the same caption, the same label-constraint words, the same tags; dev scores as served (label
constraint and consensus reranking on; also fp32_jpeg) on the first ``--dev`` dev photos; encoder latency at batch 1 and 32,
interleaved.
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
from bench.recompression import resave

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


def _jpeg(data: bytes) -> bytes:
    return resave(data, 90)


def _answers(captioner, data: bytes):
    """What the float32 and int8 engines give for one photo: the encoder's outputs, the caption as served (default
    DecodeOptions), the label-constraint words (None: no constraint) and the answer's tags."""
    from captioner.decode.answer import DEFAULT_TAGS_MIN_PROB, DEFAULT_TAGS_TOP_K, select_tags
    from captioner.decode.options import DecodeOptions
    from captioner.encoders.images import load_image

    spec, options = captioner.encoder.preprocessing, DecodeOptions()
    encoded = captioner.encoder.run([load_image(data, draft_size=spec.size, resize=spec.resize)])
    result = captioner.decode_features(encoded.features, options, encoded.imagenet_probs)[0]
    picked = (captioner.label_constraints(encoded.imagenet_probs, options) or [None])[0]
    tags = sorted(t.label for t in select_tags(result.tags, DEFAULT_TAGS_TOP_K, DEFAULT_TAGS_MIN_PROB))
    return encoded, result.caption, None if picked is None else sorted(picked[0]), tags


def agreement(reference, other, sources: dict[str, bytes], transform=None) -> dict:
    """Per-photo and summary agreement of two captioners of one bundle (other encoders): their ImageNet heads,
    caption features and answers. transform: applied to each photo's bytes before ``other`` sees it."""
    rows = {}
    for name, data in sources.items():
        a, caption_a, words_a, tags_a = _answers(reference, data)
        b, caption_b, words_b, tags_b = _answers(other, transform(data) if transform else data)
        top_a, top_b = np.argsort(-a.imagenet_probs[0])[:5], np.argsort(-b.imagenet_probs[0])[:5]
        fa, fb = a.features[0], b.features[0]
        rows[name] = {
            "top1_same": bool(top_a[0] == top_b[0]),
            "top5_overlap": len(set(top_a) & set(top_b)) / 5,
            "fp32_top1_in_int8_top5": bool(top_a[0] in top_b),
            "feature_cosine": float(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb) + 1e-12)),
            "same_caption": caption_a == caption_b,
            "same_constraint_words": words_a == words_b,
            "same_tags": tags_a == tags_b,
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
        "same_caption": float(np.mean([r["same_caption"] for r in v])),
        "same_constraint_words": float(np.mean([r["same_constraint_words"] for r in v])),
        "same_tags": float(np.mean([r["same_tags"] for r in v])),
        "worst": dict(sorted(rows.items(), key=lambda kv: kv[1]["feature_cosine"])[:5]),
        "photos": rows,
    }


def dev_scores(captioners: dict, data, n: int, transforms: dict | None = None) -> dict:
    """All metrics but METEOR as served (default DecodeOptions) of each captioner on the first n dev photos.
    transforms: {name: (captioner name, bytes -> bytes)}: also that captioner on each photo so changed."""
    from captioner.decode.options import DecodeOptions
    from captioner.evaluation.metrics import compute_metrics

    names = sorted(data.available("dev"))[:n]
    refs = data.references("dev")
    runs = {name: (captioner, None) for name, captioner in captioners.items()}
    runs |= {name: (captioners[base], f) for name, (base, f) in (transforms or {}).items()}
    out, hyps = {}, {}
    for name, (captioner, transform) in runs.items():
        captions = []
        for s in range(0, len(names), 32):
            blobs = [data.image_path(x).read_bytes() for x in names[s : s + 32]]
            results = captioner.caption_each(
                [transform(b) if transform else b for b in blobs], DecodeOptions()
            )
            captions += [r.caption for r in results]  # an unreadable dev photo would fail here: none is
        hyps[name] = dict(zip(names, captions, strict=True))
        out[name] = compute_metrics({x: refs[x] for x in names}, hyps[name], meteor=False)
    for name in runs:
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
    parser.add_argument("--dev", type=int, default=1000, help="dev photos scored (all 1,000: ~20 s per copy)")
    parser.add_argument("--test", type=int, default=200, help="dev photos for the agreement check")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-int8"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "int8_encoder.json")
    parser.add_argument(
        "--bundle-out", type=Path, help="also write the bundle with the default int8 encoder here"
    )
    args = parser.parse_args(argv)

    from bench.engine import load_captioner
    from captioner.data.flickr8k import load_flickr8k
    from captioner.encoders.images import load_and_preprocess
    from captioner.encoders.quantize import FLOAT_HEAD_CONVS, quantize_encoder
    from captioner.encoders.runtime import OnnxEncoder, limit_blas_threads
    from captioner.model.bundle import save_int8_bundle

    limit_blas_threads()
    data = load_flickr8k(FLICKR8K)
    src = args.bundle / "encoder.onnx"
    args.work.mkdir(parents=True, exist_ok=True)
    calibration = calibration_set(data)
    flickr8k_only = [data.image_path(n) for n in sorted(data.available("train"))[:32]]
    made = {  # name: (calibration photos, float head convolutions, 7-bit weights)
        "int8": (calibration, FLOAT_HEAD_CONVS, False),
        "int8_all": (calibration, 0, False),
        "int8_flickr8k": (flickr8k_only, FLOAT_HEAD_CONVS, False),
        "int8_7bit": (calibration, FLOAT_HEAD_CONVS, True),
    }
    paths = {"fp32": src} | {name: args.work / f"{name}.onnx" for name in made}
    t = time.perf_counter()
    for name, (photos, head, seven_bit) in made.items():
        if not paths[name].is_file():
            quantize_encoder(
                src, paths[name], "int8", photos, float_head_convs=head, seven_bit_weights=seven_bit
            )
    print(f"quantised in {time.perf_counter() - t:.0f} s", flush=True)
    if args.bundle_out:  # "int8" as a bundle (what `captioner quantize-encoder` writes), for bench.item8
        print("bundle:", save_int8_bundle(args.bundle, args.bundle_out, calibration), flush=True)

    fp32 = load_captioner(args.bundle, None)  # the bundle as served: label map, consensus memory, int8 step
    captioners = {"fp32": fp32} | {name: fp32.with_encoder(OnnxEncoder(paths[name])) for name in made}
    unlike = unlike_set()
    dev = sorted(data.available("dev"))  # the test photos are not in this copy of Flickr8k
    test = {n: data.image_path(n).read_bytes() for n in dev[: args.test]}
    checks = {}
    for name, transform in [(n, None) for n in made] + [("fp32_jpeg", _jpeg)]:
        other = captioners.get(name, fp32)
        checks[name] = {
            "unlike_flickr8k": agreement(fp32, other, unlike, transform),
            "flickr8k_dev": agreement(fp32, other, test, transform),
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
    spec = fp32.encoder.preprocessing
    batch = np.stack([load_and_preprocess(data.image_path(n), spec) for n in dev[:32]])
    speed = latency({name: c.encoder for name, c in captioners.items()}, batch)
    print(json.dumps(speed), flush=True)
    scores = dev_scores(captioners, data, args.dev, {"fp32_jpeg": ("fp32", _jpeg)})
    print(json.dumps(scores), flush=True)
    out = {
        "what": "int8 (static QDQ, per-channel weights) vs float32 encoder of the bundle; see bench/int8_encoder.py",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "calibration": {
            "varied": f"{len(calibration)} images: 48 Flickr8k train photos, 16 more x (dark, bright, grey, "
            f"contrast), scikit-image samples {list(CALIBRATION_SAMPLES)}",
            "flickr8k": "32 Flickr8k train photos",
        },
        "variants": {
            "int8": f"varied calibration, the first {FLOAT_HEAD_CONVS} convolutions float32 (the default)",
            "int8_all": "varied calibration, every convolution quantised",
            "int8_flickr8k": f"flickr8k calibration, the first {FLOAT_HEAD_CONVS} convolutions float32",
            "int8_7bit": "the default with 7-bit weights (seven_bit_weights: for CPUs without VNNI)",
            "fp32_jpeg": "yardstick: the float32 encoder on each photo saved again as JPEG (quality 90)",
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
