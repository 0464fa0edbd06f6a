"""python -m bench [--bundle PATH] [--inception] [--quick] [--out bench/results]

One run, the same photos throughout (the first Flickr8k dev photos, or generated ones without the data set):
  machine       fp32 matmul peak (sgemm, threadpoolctl) and the encoders' FLOPs from their ONNX graphs
  bundle        our engine on the bundle (single, batched, micro-batched; both BLAS settings), then the service
                over HTTP at concurrency 1, 8 and 32 (as shipped, and with OPENBLAS_NUM_THREADS=1)
  --inception   the original design's loop (TensorFlow, bench/baseline.py) against our engine with the SAME
                random-weight InceptionV3 and merge decoder (ONNX export; caption_model.keras via captioner.load)
  decoders      the bundle's decoder step in NumPy, onnxruntime fp32 (the default) and onnxruntime int8
  quantisation  int8 / float16 copies of each encoder: speed, and dev BLEU-4 with the bundle's decoder; the same
                for the int8 decoder step
Every part runs in its own process, one after another, so TensorFlow never shares a process with our engine.
Writes OUT/<mode>.json (summary + raw) and OUT/<mode>.png, and prints the ratios against the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import machine, report

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"


def _env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _python(module: str, *args: str, timeout: float = 600) -> None:
    """Run ``python -m module args`` in a fresh process; its stderr tail is shown if it fails."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def select_photos(n: int, work: Path, split: str = "dev") -> list[Path]:
    """The first n photos of the Flickr8k split (sorted names), or n generated JPEGs without the data set."""
    try:
        from captioner.data.flickr8k import load_flickr8k

        data = load_flickr8k(FLICKR8K)
        names = sorted(data.available(split))[:n]
        if len(names) == n:
            return [data.image_path(name) for name in names]
    except Exception:  # noqa: BLE001 - no data set here: generated photos keep the bench runnable
        pass
    return generated_photos(n, work / "photos", (500, 375))


def generated_photos(n: int, folder: Path, size: tuple[int, int]) -> list[Path]:
    """Smooth random JPEGs of ``size`` (the usual Flickr8k original is 500x375)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"gen{i}_{size[0]}x{size[1]}.jpg"
        if not path.is_file():
            rng = np.random.default_rng(i)
            w, h = size
            yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
            ch = [
                np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)
            ]
            Image.fromarray(((np.stack(ch, -1) + 1) * 127.5).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def camera_photos(folder: Path) -> list[Path]:
    """Real photos shipped with scikit-image, upscaled to 2000x1500 JPEGs: a phone upload's decode cost."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        import skimage.data as sk

        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            path = folder / f"{name}_2000x1500.jpg"
            if not path.is_file():
                Image.fromarray(getattr(sk, name)()).resize((2000, 1500), Image.BICUBIC).save(
                    path, quality=92
                )
            paths.append(path)
    except Exception:  # noqa: BLE001 - scikit-image missing: generated ones
        paths = generated_photos(4, folder, (2000, 1500))
    return paths


def quantized_copies(src: Path, out_dir: Path, calibration_photos: list[Path]) -> dict[str, Path]:
    """{"int8": path, "fp16": path}: the product's quantised copies of an encoder, made once per work folder."""
    from captioner.encoders.quantize import quantize_encoder

    made = {}
    for name, precision in (("int8", "int8"), ("fp16", "float16")):
        path = out_dir / f"{src.stem}.{name}.onnx"
        if not path.is_file():
            quantize_encoder(src, path, precision, calibration_photos if precision == "int8" else ())
        made[name] = path
    return made


def bench_bundle(args, photos: list[Path], raw: dict) -> None:
    bundle = args.bundle.resolve()
    from captioner.model.bundle import load_bundle

    load_bundle(bundle)  # a clear BundleError now rather than a failed subprocess later
    section: dict = {}
    variants: list[str] = []
    if args.quantize:
        _log("quantising the bundle's encoder (int8 static QDQ, float16-stored weights)")
        calib = select_photos(8 if args.quick else 32, args.work, "train")
        made = quantized_copies(bundle / "encoder.onnx", args.work / "quantized" / bundle.name, calib)
        variants = [f"{k}={v}" for k, v in made.items()]
    _log(f"engine on {bundle}")
    out = args.work / "engine_bundle.json"
    _python(
        "bench.engine",
        "run",
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--started",
        repr(time.time()),
        "--photos",
        *map(str, photos),
        "--camera-photos",
        *map(str, args.camera),
        *[a for v in variants for a in ("--variant", v)],
        *(["--quick"] if args.quick else []),
    )
    section["engine"] = json.loads(out.read_text())
    _log("the same engine with onnxruntime's threads spinning on after each run (its default)")
    spin = args.work / "engine_bundle_spinning.json"
    _python(
        "bench.engine", "run", "--bundle", str(bundle), "--out", str(spin), "--batched-only", "--blas-threads", "1",
        "--keep-spinning", *(["--quick"] if args.quick else []), "--photos", *map(str, photos),
    )  # fmt: skip
    section["engine_spinning"] = json.loads(spin.read_text())
    section["flops"] = machine.encoder_flops(bundle / "encoder.onnx")
    if not args.no_http:
        from bench.http import bench_service

        params = {"strategy": "beam", "beam_size": 3, "max_length": 30}
        levels = (1, 8) if args.quick else (1, 8, 32)
        per_level = {1: 4, 8: 8} if args.quick else {1: 24, 8: 160, 32: 192}
        section["http"] = {}
        configs = [("as_shipped", {}, "blas_default")]
        if not args.quick:
            configs.append(("openblas_1_thread", {"OPENBLAS_NUM_THREADS": "1"}, "blas_1"))
        for name, env, cfg in configs:
            # The bare engine's batched throughput, measured just before: the load of the other jobs on the
            # machine drifts within minutes, so a reference from the engine run above would be unfair.
            ref_out = args.work / f"engine_reference_{name}.json"
            blas = ["--blas-threads", "1"] if env else []
            _python(
                "bench.engine",
                "run",
                "--bundle",
                str(bundle),
                "--out",
                str(ref_out),
                "--batched-only",
                *blas,
                *(["--quick"] if args.quick else []),
                "--photos",
                *map(str, photos),
            )
            _log(f"service over HTTP ({name}) at concurrency {levels}")
            result = bench_service(bundle, photos, params, levels, per_level, env, max_seconds=60)
            section["http"][name] = dict(result, config=cfg, engine_reference=json.loads(ref_out.read_text()))
    raw["bundle"] = section


def bench_inception(args, photos: list[Path], raw: dict) -> None:
    art = args.work / "inception_v3"
    if not (art / "meta.json").is_file() or not (art / "inception_v3.weights.h5").is_file():
        _log("building the shared artefacts (random InceptionV3, merge decoder, tokenizer) with Keras")
        _python("bench.baseline", "build", str(art))
    onnx_path = art / "inception_v3.onnx"
    if not onnx_path.is_file():
        _log("exporting that InceptionV3 to ONNX (~1 min)")
        from captioner.encoders.export import export_encoder

        export_encoder("inception_v3", onnx_path, weights=art / "inception_v3.weights.h5")
    section: dict = {"meta": json.loads((art / "meta.json").read_text())}
    base_photos = photos[: args.baseline_photos]
    _log(f"original loop (TensorFlow) on {len(base_photos)} photos, one at a time")
    base_out = args.work / "baseline.json"
    _python(
        "bench.baseline",
        "run",
        str(art),
        "--out",
        str(base_out),
        "--max-words",
        str(args.max_words),
        "--started",
        repr(time.time()),
        "--photos",
        *map(str, base_photos),
    )
    section["baseline"] = json.loads(base_out.read_text())
    variants = []
    if args.quantize:
        _log("quantising InceptionV3 (int8 static QDQ, float16-stored weights)")
        made = quantized_copies(
            onnx_path, args.work / "quantized" / "inception_v3", select_photos(8, args.work, "train")
        )
        variants = [f"{k}={v}" for k, v in made.items()]
    _log("our engine on the same InceptionV3 + merge decoder weights")
    out = args.work / "engine_inception.json"
    _python(
        "bench.engine",
        "run",
        "--merge",
        str(art),
        "--baseline",
        str(base_out),
        "--max-words",
        str(args.max_words),
        "--out",
        str(out),
        "--started",
        repr(time.time()),
        "--photos",
        *map(str, photos),
        *[a for v in variants for a in ("--variant", v)],
        *(["--quick"] if args.quick else []),
    )
    section["engine"] = json.loads(out.read_text())
    section["flops"] = machine.encoder_flops(onnx_path)
    for r in section["baseline"]["requests"]:
        r.pop("features", None)
    section["baseline"].pop("reference_features", None)
    raw["inception_v3"] = section


def bench_quality(args, raw: dict) -> None:
    bundle = args.bundle.resolve()
    made = args.work / "quantized" / bundle.name
    encoders = [f"fp32={bundle / 'encoder.onnx'}"] + [
        f"{k}={made / f'encoder.{k}.onnx'}"
        for k in ("int8", "fp16")
        if (made / f"encoder.{k}.onnx").is_file()
    ]
    _log(
        f"dev BLEU-4 per encoder variant ({', '.join(e.split('=')[0] for e in encoders)}) and decoder variant"
    )
    out = args.work / "quality.json"
    limit = ["--limit", str(args.quality_limit)] if args.quality_limit else []
    _python(
        "bench.engine",
        "quality",
        "--bundle",
        str(bundle),
        "--data",
        str(FLICKR8K),
        "--out",
        str(out),
        "--encoder",
        *encoders,
        "--decoder",
        "decoder-int8=onnx-int8",
        "decoder-numpy=numpy",
        *limit,
    )
    raw["quality"] = json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "default", help="bundle folder")
    parser.add_argument(
        "--inception", action="store_true", help="also run the original loop vs ours on InceptionV3"
    )
    parser.add_argument("--quick", action="store_true", help="tiny inputs: a smoke run, not a measurement")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--work", type=Path, default=REPO / "cache" / "bench", help="artefacts and raw outputs"
    )
    parser.add_argument("--photos", type=int, default=None, help="how many photos (default 12; quick 4)")
    parser.add_argument(
        "--baseline-photos", type=int, default=8, help="photos the (slow) original loop captions"
    )
    parser.add_argument(
        "--max-words", type=int, default=12, help="words per caption in the InceptionV3 comparison"
    )
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--no-quantize", dest="quantize", action="store_false", default=None)
    parser.add_argument("--quality-limit", type=int, default=None, help="dev images for BLEU (default: all)")
    args = parser.parse_args(argv)
    if args.quantize is None:
        args.quantize = not args.quick
    args.work.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    n = args.photos or (4 if args.quick else 12)
    photos = select_photos(n, args.work)
    args.camera = camera_photos(args.work / "camera") if not args.quick else []
    started = time.time()
    raw: dict = {
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "photos": [str(p) for p in photos],
        "argv": sys.argv[1:],
    }
    _log(f"{mode} run on {len(photos)} photos; load average {os.getloadavg()}")
    raw["machine"] = machine.describe(args.quick)
    raw["machine"]["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    bench_bundle(args, photos, raw)
    raw["machine"]["matmul_peak_middle"] = machine.matmul_peak(raw["machine"]["matmul_peak"]["n"])
    if args.inception:
        bench_inception(args, photos, raw)
    if args.quantize and FLICKR8K.is_dir() and not args.quick:
        bench_quality(args, raw)
    raw["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    raw["machine"]["matmul_peak_end"] = machine.matmul_peak(raw["machine"]["matmul_peak"]["n"])
    raw["seconds"] = time.time() - started
    summary = report.summarize(raw)
    path = report.write_json(raw, summary, args.out / f"{mode}.json")
    png = report.chart(raw, summary, args.out / f"{mode}.png")
    report.print_table(summary)
    _log(f"wrote {path}" + (f" and {png}" if png else "") + f" in {raw['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
