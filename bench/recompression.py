"""Do the captions hold when the photo is compressed differently? Dev as served on Flickr8k's own files and on
the same photos saved again as JPEG, for one or more bundles.

    PYTHONPATH=src:. python -m bench.recompression [--bundle NAME=DIR ...] [--quality 90 60] [--dev 1000]

A user's photo never comes in Flickr8k's compression. For each bundle and each copy of the dev photos (the files,
then each re-save quality): all metrics but METEOR, distinct captions, and the share of captions that stay the
same as on the files (the bundle's own). Results: bench/results/recompression.json (~40 s per bundle and copy).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"


def resave(data: bytes, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def captions(captioner, blobs: list[bytes], batch: int = 32) -> list[str]:
    from captioner.decode.options import DecodeOptions

    out: list[str] = []
    for s in range(0, len(blobs), batch):
        out += [r.caption for r in captioner.caption_each(blobs[s : s + batch], DecodeOptions())]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recompression")
    parser.add_argument(
        "--bundle", action="append", default=None, help="NAME=DIR (default: default=models/default)"
    )
    parser.add_argument("--quality", type=int, nargs="+", default=[90, 60])
    parser.add_argument("--dev", type=int, default=1000, help="dev photos scored")
    parser.add_argument("--data", type=Path, default=FLICKR8K)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "recompression.json")
    args = parser.parse_args(argv)

    from captioner.data.flickr8k import load_flickr8k
    from captioner.encoders.runtime import limit_blas_threads
    from captioner.evaluation.metrics import compute_metrics
    from captioner.loading import load

    limit_blas_threads()
    data = load_flickr8k(args.data)
    names = sorted(data.available("dev"))[: args.dev]
    refs = data.references("dev")
    refs = {n: refs[n] for n in names}
    files = [data.image_path(n).read_bytes() for n in names]
    copies = {"files": files} | {f"jpeg{q}": [resave(b, q) for b in files] for q in args.quality}
    bundles = dict(b.split("=", 1) for b in args.bundle or [f"default={REPO / 'models' / 'default'}"])
    results: dict[str, dict] = {}
    for name, path in bundles.items():
        captioner = load(Path(path))
        results[name] = {"bundle": str(path)}
        on_files: list[str] = []
        for copy, blobs in copies.items():
            got = captions(captioner, blobs)
            on_files = on_files or got
            scores = compute_metrics(refs, dict(zip(names, got, strict=True)), meteor=False)
            scores["distinct"] = len(set(got))
            scores["same_as_on_files"] = float(np.mean([a == b for a, b in zip(got, on_files, strict=True)]))
            results[name][copy] = scores
            print(name, copy, json.dumps({k: round(v, 4) for k, v in scores.items()}), flush=True)
    out = {
        "what": "dev as served (default DecodeOptions) on Flickr8k's files and on the photos saved again as JPEG",
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "n_images": len(names),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
