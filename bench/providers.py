"""python -m bench.providers [--bundle DIR] [--providers cpu,cuda] [--batches 1,8,32,128] [--repeats N] [--out FILE]

The same engine on each execution provider (encoders/providers.py), one after another in this process:
  encoder      the bundle's encoder alone on preprocessed batches of 1/8/32/128 images: p50 ms per batch and
               images per second (batch / p50)
  end_to_end   caption_images (encoder + beam-3 decoding) at batch 1 (p50 ms) and batch 32 (images/s), with
               the decoder backend the provider gets by default (onnx-int8 on CPU, onnx fp32 on GPU)
A provider onnxruntime does not offer, or one whose session fell back to the CPU, is recorded as skipped with
the reason. The results file names the machine: CPU model and cores, the GPU from nvidia-smi, onnxruntime's
version, device and available providers.
Writes OUT (default bench/results/providers.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.engine import percentiles
from bench.machine import cpu_info

REPO = Path(__file__).resolve().parents[1]


def gpu_info() -> list[dict]:
    """One entry per GPU from nvidia-smi (name, memory, driver); [] without nvidia-smi or a GPU."""
    if not shutil.which("nvidia-smi"):
        return []
    fields = "name,memory.total,driver_version,compute_cap"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(fields.split(","), (v.strip() for v in line.split(",")), strict=False))
            for line in out.strip().splitlines() if line.strip()]  # fmt: skip


def machine() -> dict:
    import onnxruntime as ort

    return {
        **cpu_info(),
        "gpus": gpu_info(),
        "onnxruntime": ort.__version__,
        "onnxruntime_device": ort.get_device(),
        "available_providers": ort.get_available_providers(),
    }


def timed(fn, repeats: int) -> list[float]:
    """ms per call of fn(), after one warm-up call (CUDA: kernel selection and allocation happen there)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def bench_provider(bundle, provider: str, photos: list[Path], batches: list[int], repeats: int) -> dict:
    from captioner.decode.options import DecodeOptions
    from captioner.encoders.images import load_and_preprocess
    from captioner.encoders.providers import ProviderError, resolve_providers
    from captioner.loading import load

    try:
        wanted = resolve_providers(provider)[0]
    except ProviderError as exc:
        return {"skipped": str(exc)}
    start = time.perf_counter()
    captioner = load(bundle, execution_provider=provider)
    got = dict(captioner.info.providers)
    if got["encoder"] != wanted:
        return {"skipped": f"asked for {wanted}, the encoder got {got['encoder']}", "providers": got}
    out: dict = {"providers": got, "decoder_backend": captioner.info.decoder_backend,
                 "load_s": round(time.perf_counter() - start, 3), "encoder": {}}  # fmt: skip
    arrays = np.stack([load_and_preprocess(p, captioner.encoder.preprocessing) for p in photos])
    for b in batches:
        batch = arrays[np.arange(b) % len(arrays)]
        # Fewer repeats for the big batches on the CPU: a batch of 128 is seconds there.
        n = max(2, repeats if b <= 8 else repeats // 4)
        stats = percentiles(timed(lambda batch=batch: captioner.encoder.encode_arrays(batch), n))
        out["encoder"][str(b)] = {"batch_ms": stats, "images_per_s": b * 1000 / stats["p50"]}
    beam = DecodeOptions(strategy="beam", beam_size=3)
    images = [captioner.load(p) for p in photos]
    single = percentiles(timed(lambda: captioner.caption_images(images[:1], beam), repeats))
    batch32 = [images[i % len(images)] for i in range(32)]
    many = percentiles(timed(lambda: captioner.caption_images(batch32, beam), max(2, repeats // 4)))
    out["end_to_end"] = {
        "single_ms": single,
        "batch32_images_per_s": 32 * 1000 / many["p50"],
        "captions": [r.caption for r in captioner.caption_images(images[:4], beam)],
    }
    return out


def main(argv: list[str] | None = None) -> dict:
    from bench.__main__ import select_photos

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: models/default)")
    ap.add_argument("--providers", default="cpu,cuda", help="comma-separated: cpu, cuda, tensorrt, auto")
    ap.add_argument("--batches", default="1,8,32,128", help="encoder batch sizes")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs at batch <= 8 (a quarter above)")
    ap.add_argument("--photos", type=int, default=8, help="distinct photos (repeated to fill a batch)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "providers.json")
    args = ap.parse_args(argv)
    photos = select_photos(args.photos, Path(tempfile.mkdtemp(prefix="bench-providers-")))
    result = {
        "machine": machine(),
        "bundle": str(args.bundle or "models/default"),
        "photos": [p.name for p in photos],
        "providers": {},
    }
    for provider in args.providers.split(","):
        print(f"[bench.providers] {provider} ...", flush=True)
        r = bench_provider(
            args.bundle, provider, photos, [int(b) for b in args.batches.split(",")], args.repeats
        )
        result["providers"][provider] = r
        if "skipped" in r:
            print(f"  skipped: {r['skipped']}", flush=True)
            continue
        for b, e in r["encoder"].items():
            print(
                f"  encoder batch {b:>3}: p50 {e['batch_ms']['p50']:8.1f} ms  {e['images_per_s']:7.1f} img/s"
            )
        ee = r["end_to_end"]
        print(
            f"  caption b=1 p50 {ee['single_ms']['p50']:.1f} ms; b=32 {ee['batch32_images_per_s']:.1f} img/s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
