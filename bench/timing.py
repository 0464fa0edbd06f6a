"""The timing helpers every part of the bench shares: percentiles, process memory, BLAS threads, a step timer.

Standard library and NumPy only (bench/baseline.py imports this next to TensorFlow).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np


def percentiles(values) -> dict[str, float]:
    """p50/p95/p99, mean and count of ``values`` (ms usually); NaN figures for no values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    return {f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)} | {
        "mean": float(v.mean()),
        "n": int(v.size),
    }


def proc_status_mb(pid: int | str = "self") -> dict[str, float]:
    """A process's peak (VmHWM) and current (VmRSS) resident memory in MB, from /proc ({} where unreadable)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def rss_peak_mb() -> float:
    """This process's peak resident memory in MB (NaN where /proc is missing)."""
    return proc_status_mb().get("VmHWM", float("nan"))


@contextlib.contextmanager
def blas_threads(n: int | None):
    """Limit NumPy's BLAS to n threads inside the block (None: leave it as is)."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


class StepTimer:
    """Wraps a step decoder, adding up the seconds spent inside step() (and step_topk): the rest of a search
    is search overhead."""

    def __init__(self, decoder):
        self.decoder, self.vocab_size, self.seconds, self.calls = decoder, decoder.vocab_size, 0.0, 0

    def initial_state(self, features):
        return self.decoder.initial_state(features)

    def _timed(self, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out

    def step(self, tokens, state):
        return self._timed(self.decoder.step, tokens, state)

    @property
    def step_topk(self):
        """The decoder's top-k step, timed the same way (None when it has none: search then uses step)."""
        inner = getattr(self.decoder, "step_topk", None)
        if inner is None:
            return None
        return lambda tokens, state, k: self._timed(inner, tokens, state, k)
