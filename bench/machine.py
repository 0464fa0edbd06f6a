"""What the machine can do and what the encoder asks of it: fp32 matmul peak and the encoder's FLOPs.

matmul_peak: float32 square matmuls through NumPy's BLAS (sgemm) with threadpoolctl setting its threads; the
best of a few runs, in GFLOP/s (2 n^3 per matmul). A practical ceiling: hand-written FMA loops reach ~10% more.

encoder_flops: 2 x the multiply-adds of every Conv, MatMul and Gemm in the ONNX graph, with shapes from onnx shape
inference at batch 1 (onnxruntime's symbolic shape inference, built on onnx's). Those ops are >99% of a CNN's arithmetic; element-wise ops, pooling and normalisation are
left out (they are memory-bound, not FLOP-bound).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np


def cpu_info() -> dict:
    model = ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "f16c") if f in flags]
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "simd": simd,
        "load_avg": os.getloadavg(),
    }


def matmul_peak(n: int = 2048, threads: int | None = None, repeats: int = 5) -> dict:
    """Best-of-``repeats`` float32 n x n matmul throughput in GFLOP/s with ``threads`` BLAS threads."""
    from threadpoolctl import threadpool_limits

    threads = threads or os.cpu_count() or 1
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)  # warm-up: thread pool start, page faults
        for _ in range(repeats):
            t = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t)
    return {"n": n, "threads": threads, "best_s": best, "gflops": 2 * n**3 / best / 1e9}


def _dims(value_info) -> list[int] | None:
    shape = value_info.type.tensor_type.shape
    dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    return None if any(d is None for d in dims) else dims


def encoder_flops(onnx_path: str | Path) -> dict:
    """FLOPs per image (batch 1) of an ONNX encoder, by op type, from its Conv/MatMul/Gemm shapes."""
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    for inp in graph.input:
        if inp.name in initializers:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1  # the batch axis
    model = _infer_shapes(model)
    graph = model.graph
    shapes: dict[str, list[int] | None] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        shapes[vi.name] = _dims(vi)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = {"Conv": 0, "MatMul": 0, "Gemm": 0}
    unknown = 0
    for node in graph.node:
        if node.op_type not in macs:
            continue
        ins = [shapes.get(name) for name in node.input]
        out = shapes.get(node.output[0])
        if node.op_type == "Conv":
            w = ins[1]
            if w is None or out is None:
                unknown += 1
                continue
            # out [N, M, *spatial], w [M, C/group, *kernel]: each output element is C/group * prod(kernel) MACs.
            macs["Conv"] += int(np.prod(out)) * int(np.prod(w[1:]))
        else:
            a = ins[0]
            if a is None or out is None:
                unknown += 1
                continue
            k = a[-1] if node.op_type == "MatMul" else _gemm_k(node, a)
            macs[node.op_type] += int(np.prod(out)) * k
    total = sum(macs.values())
    return {
        "gflops": 2 * total / 1e9,
        "gmacs": total / 1e9,
        "by_op_gmacs": {k: v / 1e9 for k, v in macs.items() if v},
        "nodes_without_shapes": unknown,
        "params_m": sum(int(np.prod(i.dims)) for i in graph.initializer) / 1e6,
    }


def _infer_shapes(model):
    """onnxruntime's symbolic shape inference (it folds the computed Pad/Reshape shapes that torch exports
    contain); plain onnx shape inference if that fails."""
    import onnx

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - an op it does not know: fall back
        return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _gemm_k(node, a: list[int]) -> int:
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    return a[0] if trans_a else a[1]


def describe(quick: bool = False) -> dict:
    """The machine section of the report: CPU, matmul peak on all cores and on one."""
    n = 1024 if quick else 2048
    repeats = 3 if quick else 7
    return {
        **cpu_info(),
        "matmul_peak": matmul_peak(n, repeats=repeats),
        "matmul_peak_1_thread": matmul_peak(n, threads=1, repeats=max(2, repeats // 2)),
    }
