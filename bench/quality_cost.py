"""Serving cost of the decoding-time quality features (label constraint, consensus reranking) in one run.

The same bundle and photos, each round timing "before" (both features off: the previous default) and "after" (the
defaults) back to back: single-image p50 (decode + encoder + search, one photo at a time) and batch-32
throughput. Issue 15's budget: after/before single p50 <= 1.3, batch-32 throughput after/before >= 0.75.

    PYTHONPATH=src:. python -m bench.quality_cost [--rounds 5] [--photos 32] [--ensemble-member WEIGHTS ...]

With ``--ensemble-member`` (decoder weights of the bundle's shape, e.g. another seed's
``checkpoints/best.weights.h5``) a third variant, "ensemble", runs the defaults on a temporary copy of the bundle
with those members (``record_ensemble``), timed against "after".

With ``--baseline-src DIR`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/at-filing 8668c2b``, the
code and bundle when issue 15 was filed) a variant "baseline" runs that tree's engine with its own default bundle
and options in a worker process, in turn with the others each round: the issue's budget is relative to it.

Writes bench/results/quality_cost.json.
"""

from __future__ import annotations

import argparse
import json
import sys
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
    parser.add_argument("--ensemble-member", type=Path, action="append", default=[])
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--baseline-worker", metavar="PHOTOS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_worker is not None:
        return _baseline_worker(args.baseline_worker)
    limit_blas_threads()  # as the service does at startup
    dataset = load_flickr8k(args.data_root)
    photos = [dataset.image_path(n) for n in dataset.available("dev")[: args.photos]]
    engine = captioner.load()
    after = DecodeOptions()
    before = replace(after, label_constraint=False, consensus_neighbours=0)
    variants = [("before", engine, before), ("after", engine, after)]
    if args.ensemble_member:
        variants.append(("ensemble", _ensemble_engine(args.ensemble_member), after))
    rounds: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    baseline = _Baseline(args.baseline_src, photos) if args.baseline_src else None
    if baseline is not None:
        rounds["baseline"] = []
    for _ in range(args.rounds):
        if baseline is not None:
            rounds["baseline"].append(baseline.measure())
        for name, engine, options in variants:
            rounds[name].append(_measure(engine, photos, options))
    if baseline is not None:
        baseline.close()

    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in rounds[name]]))

    def compare(new: str, old: str) -> dict:
        """Medians of ``new`` and ``old`` and of their per-round ratios (new over old)."""
        pairs = list(zip(rounds[new], rounds[old], strict=True))
        return {
            f"{new}_single_p50_ms": median(new, "single_p50_ms"),
            f"{new}_b32_img_s": median(new, "b32_img_s"),
            f"{old}_single_p50_ms": median(old, "single_p50_ms"),
            f"{old}_b32_img_s": median(old, "b32_img_s"),
            f"single_p50_{new}_over_{old}": float(
                np.median([a["single_p50_ms"] / b["single_p50_ms"] for a, b in pairs])
            ),
            f"b32_{new}_over_{old}": float(np.median([a["b32_img_s"] / b["b32_img_s"] for a, b in pairs])),
        }

    summary = compare("after", "before")
    if "baseline" in rounds:
        summary |= {"baseline_src": str(args.baseline_src), **compare("after", "baseline")}
    if "ensemble" in rounds:
        summary |= {"ensemble_members": 1 + len(args.ensemble_member), **compare("ensemble", "after")}
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


def _measure(engine, photos: list[Path], options) -> dict:
    """One round of one variant: single-image p50 (each photo once) and batch-32 throughput (the photos twice)."""
    single = single_image(engine, photos, options, repeats=1)
    batch = batched(engine, photos, options, batch_size=32, n_images=len(photos) * 2)
    return {"single_p50_ms": single["latency_ms"]["p50"], "b32_img_s": batch["throughput_img_s"]}


def _baseline_worker(photos_json: str) -> None:
    """The baseline's side (``--baseline-worker``, run by ``_Baseline`` with the other tree's ``captioner`` first
    on the path): its default bundle and DecodeOptions(), one ``_measure`` per line read, answered as JSON."""
    import captioner
    from captioner.decode.options import DecodeOptions

    limit_blas_threads()
    photos = [Path(p) for p in json.loads(photos_json)]
    engine = captioner.load()
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        print(json.dumps(_measure(engine, photos, DecodeOptions())), flush=True)


class _Baseline:
    """A worker process running another source tree's engine; ``measure`` times one round there."""

    def __init__(self, src: Path, photos: list[Path]):
        import os
        import subprocess

        bench_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(src) / "src"), bench_root])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.quality_cost", "--baseline-worker", json.dumps([str(p) for p in photos])],
            cwd=bench_root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the baseline worker stopped (exit code {self.proc.wait()})")
        return json.loads(line)

    def measure(self) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _ensemble_engine(members: list[Path]):
    """The default bundle with ``members`` as ensemble members, from a temporary copy (the shipped one unchanged)."""
    import shutil
    import tempfile

    import captioner
    from captioner.model.bundle import DEFAULT_BUNDLE, record_ensemble

    folder = Path(tempfile.mkdtemp(prefix="ensemble-bundle-")) / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    record_ensemble(folder, list(members))
    try:
        return captioner.load(folder)
    finally:
        shutil.rmtree(folder.parent)


if __name__ == "__main__":
    main()
