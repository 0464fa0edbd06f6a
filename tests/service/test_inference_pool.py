"""InferencePool.wait_async: the coroutine the single-image route awaits its job with."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time

import pytest

from captioner.service.inference import InferencePool
from captioner.service.problems import ServiceError


def test_wait_async_returns_the_jobs_result():
    pool = InferencePool(max_queue=2, workers=1, timeout_s=5)
    try:
        started = time.perf_counter()
        assert asyncio.run(pool.wait_async(pool.submit(lambda: 42), started)) == 42
    finally:
        pool.shutdown()


def test_wait_async_times_out_with_504_and_the_job_keeps_its_slot_until_it_ends(caplog):
    pool = InferencePool(max_queue=1, workers=1, timeout_s=0.1)
    release = threading.Event()

    def slow():
        release.wait(10)
        raise ValueError("the job failed after its caller left")

    async def scenario():  # one event loop throughout, as in the server
        future = pool.submit(slow)
        with pytest.raises(ServiceError) as caught:
            await pool.wait_async(future, time.perf_counter())
        assert caught.value.status == 504
        assert pool.inflight == 1  # still running: the queue count tells the truth
        with pytest.raises(ServiceError) as full:
            pool.submit(lambda: None)
        assert full.value.status == 503
        release.set()
        for _ in range(200):
            if pool.inflight == 0:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the loop runs the late outcome's callbacks
        gc.collect()
        await asyncio.sleep(0.05)

    try:
        with caplog.at_level(logging.ERROR):
            asyncio.run(scenario())
            gc.collect()
        assert pool.inflight == 0
        assert "never retrieved" not in caplog.text  # the late failure is read and dropped, not logged
    finally:
        release.set()
        pool.shutdown()
