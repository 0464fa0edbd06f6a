"""What the ImageNet tags cost: the bundle's encoder with its head (features + imagenet_probs in one run) against
the same graph without it, batch 1 and 32, interleaved repeats in one process.

    python -m bench.tags [--bundle models/default] [--repeats 15] [--out bench/results/tags.json]

The headless copy is the bundle's own file with the head's nodes, weights and output removed, so the two differ
only by the classifier (one [B, 1280] x [1280, 1000] matmul and a softmax).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def without_head(src: Path, dst: Path) -> Path:
    """Copy of encoder ``src`` without the "imagenet_probs" output and everything only it needed."""
    import onnx

    from captioner.encoders.imagenet import IMAGENET_PROBS_OUTPUT

    model = onnx.load(str(src))
    graph = model.graph
    keep = [o for o in graph.output if o.name != IMAGENET_PROBS_OUTPUT]
    del graph.output[:]
    graph.output.extend(keep)
    needed = {o.name for o in graph.output}
    nodes = []
    for node in reversed(graph.node):  # nodes are topologically sorted: walk back from the outputs
        if any(out in needed for out in node.output):
            nodes.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(nodes))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(dst))
    return dst


def _time_ms(fn, batch: np.ndarray, calls: int) -> float:
    """Median ms of ``calls`` runs of fn(batch)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(batch)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def _head_alone_ms(encoder_path: Path, batch_size: int, threads: int | None, calls: int = 200) -> float:
    """Median ms of the head by itself in onnxruntime (the file's own head nodes and weights, fed features)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from captioner.encoders.imagenet import IMAGENET_PROBS_OUTPUT
    from captioner.encoders.runtime import session_options

    model = onnx.load(str(encoder_path))
    graph = model.graph
    features = graph.output[0].name
    head = []  # the head's nodes: everything that (transitively) reads only the features and the head's weights
    produced = {features}
    for node in graph.node:
        if (
            node.op_type == "Cast"
            and node.output[0].startswith("imagenet_head.")
            or any(i in produced for i in node.input)
        ):
            head.append(node)
            produced.update(node.output)
    names = {i for n in head for i in n.input}
    inits = [i for i in graph.initializer if i.name in names]
    sub = helper.make_graph(
        head,
        "head",
        [helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, ["batch", 1280])],
        [o for o in graph.output if o.name == IMAGENET_PROBS_OUTPUT],
        inits,
    )
    sub_model = helper.make_model(sub, opset_imports=model.opset_import)
    session = ort.InferenceSession(
        sub_model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).uniform(0, 2, (batch_size, 1280)).astype(np.float32)
    return _time_ms(lambda b: session.run(None, {features: b}), x, calls)


def main(argv: list[str] | None = None) -> None:
    from captioner.encoders.runtime import OnnxEncoder
    from captioner.model.bundle import load_bundle

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds per batch size")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tags.json"))
    args = parser.parse_args(argv)

    bundle = load_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        headed = OnnxEncoder(bundle.encoder_path, threads=args.threads)
        if not headed.has_imagenet_probs:
            raise SystemExit(f"{bundle.encoder_path} has no ImageNet head")
        headless = OnnxEncoder(without_head(bundle.encoder_path, Path(tmp) / "e.onnx"), threads=args.threads)
        size = headed.preprocessing.size
        rng = np.random.default_rng(0)
        rows = {}
        for batch_size in (1, 32):
            batch = rng.uniform(-1, 1, (batch_size, 3, size, size)).astype(np.float32)
            # Same features from both files: the head is an extra branch, not a change.
            diff = float(
                np.abs(headed.run_arrays(batch).features - headless.run_arrays(batch).features).max()
            )
            calls = 5 if batch_size == 1 else 1
            with_head, without = [], []
            for r in range(args.repeats):
                order = [(headed.run_arrays, with_head), (headless.run_arrays, without)]
                for fn, sink in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
                    sink.append(_time_ms(fn, batch, calls))
            ratios = np.asarray(with_head) / np.asarray(without)
            head_ms = _head_alone_ms(bundle.encoder_path, batch_size, args.threads)
            rows[f"batch_{batch_size}"] = {
                "with_head_ms_median": round(float(np.median(with_head)), 3),
                "without_head_ms_median": round(float(np.median(without)), 3),
                "ratio_median": round(float(np.median(ratios)), 4),
                "ratio_of_medians": round(float(np.median(with_head) / np.median(without)), 4),
                "ratio_p10_p90": [round(float(np.percentile(ratios, q)), 4) for q in (10, 90)],
                # The fastest round of each: the least disturbed by other work on a shared machine.
                "with_head_ms_min": round(float(np.min(with_head)), 3),
                "without_head_ms_min": round(float(np.min(without)), 3),
                "ratio_of_mins": round(float(np.min(with_head) / np.min(without)), 4),
                "features_max_abs_diff": diff,
                "head_alone_ms_median": round(head_ms, 4),
                "repeats": args.repeats,
            }
            print(batch_size, rows[f"batch_{batch_size}"], flush=True)
    report = {
        "what": "bundle encoder with the ImageNet head (features + imagenet_probs, one onnxruntime run) vs the "
        "same graph without the head; median ms per encoder call, interleaved repeats",
        "encoder": str(bundle.encoder_path),
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "results": rows,
        # The head's work: one [B, 1280] x [1280, 1000] matmul and a softmax, against the encoder's ~0.86 G
        # multiply-adds per image (EfficientNet-Lite2 at 260x260, PERF-NOTES.md).
        "head_multiply_adds_per_image": 1280 * 1000,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
