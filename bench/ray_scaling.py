"""Throughput per core: the batch job on 1 and 2 Ray workers (and in one process), and one service instance.

    python -m bench.ray_scaling [--bundle models/default] [--n 64] [--service]

batch    ``caption_dir`` over the first N photos of ../shared/data/flickr8k/Images (sorted names; generated photos
         without the data set), beam search 3: one process on 1 thread, then a local Ray instance (num_cpus=2) with 1
         and 2 model replicas of 1 thread each, best of --repeats interleaved runs. Reported: wall time including
         Ray's start and the replicas' model load, and the marginal rate (a one-batch job gives the fixed cost).
service  (--service) one instance with CAPTIONER_THREADS=1 and one inference worker at concurrency 1, 2 and 4:
         the per-core figure that sizes replicas (bench/results/service_per_core.json).
The shared folder is only read: the list of photos and all outputs go to a temporary folder and bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "flickr8k" / "Images"


def photos(n: int, work: Path) -> list[Path]:
    if IMAGES.is_dir():
        found = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() == ".jpg")[:n]
        if len(found) == n:
            return found
    from bench.__main__ import generated_photos

    return generated_photos(n, work / "photos", (500, 375))


def job(listing: Path, out: Path, bundle: Path, batch_size: int, **kwargs) -> dict:
    from captioner.caption_dir import caption_dir

    out.unlink(missing_ok=True)
    return caption_dir(listing, out, bundle=bundle, batch_size=batch_size, progress=False, **kwargs)


def bench_batch(bundle: Path, n: int, batch_size: int, work: Path, repeats: int) -> dict:
    """Each configuration ``repeats`` times, interleaved, best run kept: the machine is shared, and the best run
    is the one least disturbed by other work. The marginal rate is the extra images of the full job over a small
    one (one batch) per extra second: the throughput once the replicas are up."""
    import ray

    paths = photos(n, work)
    (work / "small.txt").write_text("".join(f"{p}\n" for p in paths[:batch_size]))
    (work / "full.txt").write_text("".join(f"{p}\n" for p in paths))
    configs = {
        "local_1_thread": {"threads": 1},
        "ray_1_worker": {"threads": 1, "ray": True, "workers": 1},
        "ray_2_worker": {"threads": 1, "ray": True, "workers": 2},
    }
    best: dict[str, dict[str, float]] = {name: {} for name in configs}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        for _ in range(repeats):
            for name, kwargs in configs.items():
                for size in ("small", "full"):
                    summary = job(
                        work / f"{size}.txt", work / f"{name}_{size}.jsonl", bundle, batch_size, **kwargs
                    )
                    best[name][size] = min(best[name].get(size, float("inf")), summary["seconds"])
    finally:
        ray.shutdown()
    runs = {}
    for name, t in best.items():
        per_image = (t["full"] - t["small"]) / (n - batch_size)
        runs[name] = {
            "wall_s": round(t["full"], 2),
            "images_per_s_wall": round(n / t["full"], 1),
            "startup_s": round(t["small"] - batch_size * per_image, 2),
            "images_per_s_marginal": round(1 / per_image, 1) if per_image > 0 else None,
        }
    local = [json.loads(line) for line in (work / "local_1_thread_full.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (work / "ray_2_worker_full.jsonl").read_text().splitlines()]
    same = [a["image"] for a in local] == [b["image"] for b in two] and all(
        a.get("caption") == b.get("caption") for a, b in zip(local, two, strict=True)
    )
    one, two_w = runs["ray_1_worker"], runs["ray_2_worker"]
    marginal = (one["images_per_s_marginal"], two_w["images_per_s_marginal"])
    return {
        "images": n,
        "batch_size": batch_size,
        "repeats_best_of": repeats,
        "options": "beam search, beam 3, max 30 words",
        "runs": runs,
        "speedup_2_vs_1_worker_marginal": round(marginal[1] / marginal[0], 2) if all(marginal) else None,
        "speedup_2_vs_1_worker_wall": round(one["wall_s"] / two_w["wall_s"], 2),
        "ray_output_equals_local": same,
    }


def bench_service_per_core(bundle: Path, work: Path) -> dict:
    from bench.http import bench_service

    env = {"CAPTIONER_THREADS": "1", "CAPTIONER_INFERENCE_WORKERS": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}  # fmt: skip
    result = bench_service(
        bundle, photos(16, work), {"strategy": "beam", "beam_size": 3}, concurrencies=(1, 2, 4),
        requests_per_level={1: 24, 2: 32, 4: 48}, env=env,
    )  # fmt: skip
    return {
        "env": env,
        "cold_start_s": round(result["cold_start_s"], 2),
        "rss_mb": result["process"]["rss_mb"],
        "peak_rss_mb": result["process"]["peak_rss_mb"],
        "levels": {
            c: {
                "throughput_rps": round(level["throughput_rps"], 2),
                "p50_ms": round(level["latency_ms"]["p50"], 1),
                "p95_ms": round(level["latency_ms"]["p95"], 1),
                "statuses": level["statuses"],
            }
            for c, level in result["levels"].items()
        },
    }


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "note": "2 vCPUs shared with a training job; figures are lower bounds for a dedicated core",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; the best is kept")
    parser.add_argument(
        "--service", action="store_true", help="also measure one service instance on one core"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import ray

    from captioner.model.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    model = {
        "path": str(args.bundle),
        "version": bundle.version,
        "encoder": bundle.manifest["encoder"]["name"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": machine(), "model": model, "ray": ray.__version__}
        result |= bench_batch(args.bundle, args.n, args.batch_size, Path(tmp), args.repeats)
        (args.out / "ray_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        if args.service:
            service = {"machine": machine(), "model": model} | bench_service_per_core(args.bundle, Path(tmp))
            (args.out / "service_per_core.json").write_text(json.dumps(service, indent=2) + "\n")
            print(json.dumps(service, indent=2))


if __name__ == "__main__":
    main()
