"""Bounded, time-limited inference: at most ``max_queue`` jobs queued or running; more are refused at once.

Jobs run on a small pool of ``workers`` threads (onnxruntime and NumPy release the GIL). A caller waits for its
job at most ``timeout_s``; a job that times out still finishes in the background and still holds its queue
slot until then, so the queue count always tells the truth about the work the machine is doing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from captioner.service.problems import ServiceError

T = TypeVar("T")


def _read_and_drop(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class InferencePool:
    def __init__(
        self,
        max_queue: int,
        workers: int,
        timeout_s: float,
        on_inflight: Callable[[int], None] | None = None,
    ):
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._slots = threading.BoundedSemaphore(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="captioner-infer")
        self._inflight = 0
        self._lock = threading.Lock()
        self._on_inflight: Callable[[int], None] = on_inflight or (lambda n: None)

    @property
    def inflight(self) -> int:
        return self._inflight

    def _count(self, delta: int) -> None:
        with self._lock:
            self._inflight += delta
            self._on_inflight(self._inflight)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn``; raises ServiceError 503 at once when ``max_queue`` jobs are already in flight."""
        if not self._slots.acquire(blocking=False):
            raise ServiceError(
                503,
                "overloaded",
                f"the server is busy ({self.max_queue} captioning requests in flight); retry in a moment",
                headers={"Retry-After": "1"},
            )
        self._count(+1)
        try:
            future = self._executor.submit(fn)
        except BaseException:
            self._slots.release()
            self._count(-1)
            raise

        def _done(_: Future) -> None:
            self._slots.release()
            self._count(-1)

        future.add_done_callback(_done)
        return future

    def wait(self, future: Future[T], started: float) -> T:
        """The job's result, or ServiceError 504 once ``timeout_s`` has passed since ``started`` (perf_counter)."""
        try:
            return future.result(timeout=self._remaining(started))
        except FutureTimeout:
            raise self._timeout() from None

    async def wait_async(self, future: Future[T], started: float) -> T:
        """``wait`` for asyncio code: awaits without holding a thread. A timeout (or the request's cancellation)
        leaves the job running (it keeps its slot until it ends), as ``wait`` does; its outcome is then read and
        dropped, never logged as an exception nobody retrieved."""
        waiter = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=self._remaining(started))
        finally:
            if not waiter.done():
                waiter.add_done_callback(_read_and_drop)
        if not done:
            raise self._timeout()
        return waiter.result()

    def _remaining(self, started: float) -> float:
        return max(self.timeout_s - (time.perf_counter() - started), 0.0)

    def _timeout(self) -> ServiceError:
        return ServiceError(
            504,
            "timeout",
            f"captioning took longer than {self.timeout_s:g} s (CAPTIONER_REQUEST_TIMEOUT_S); retry later or "
            "send a smaller image",
            headers={"Retry-After": "5"},
        )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
