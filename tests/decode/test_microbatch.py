"""MicroBatcher: batched results equal one-at-a-time runs, batches form, back-pressure, errors stay local."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from captioner import loading
from captioner.decode.captioner import Captioner
from captioner.decode.microbatch import MicroBatcher, QueueFull
from captioner.decode.options import DecodeOptions

GREEDY = DecodeOptions(strategy="greedy", max_length=10)
BEAM = DecodeOptions(strategy="beam", beam_size=3, max_length=10, n_best=2)


@pytest.fixture(scope="module")
def captioner(tiny_bundle) -> Captioner:
    return loading.load(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def images(captioner, photo_files):
    return [captioner.load(p) for p in photo_files]


@pytest.fixture(scope="module")
def reference(captioner, images):
    """One-at-a-time results per (image index, options)."""
    return {
        (i, opts): captioner.caption_images([im], opts)[0]
        for i, im in enumerate(images)
        for opts in (GREEDY, BEAM)
    }


class GatedEncoder:
    """Wraps an encoder: blocks every run() (features and ImageNet probabilities) until ``gate`` is set; raises
    for images in ``bad``."""

    def __init__(self, encoder, bad: tuple[int, ...] = ()):
        self.encoder, self.bad = encoder, {id(x) for x in bad}
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.preprocessing, self.feature_size = encoder.preprocessing, encoder.feature_size

    def run(self, images):
        self.entered.set()
        self.gate.wait(10)
        if any(id(im) in self.bad for im in images):
            raise ValueError("this image cannot be encoded")
        return self.encoder.run(images)


def gated_captioner(captioner, bad: tuple = ()) -> tuple[GatedEncoder, Captioner]:
    """A captioner whose encoder holds every batch until ``gate`` is set (closed here)."""
    gated = GatedEncoder(captioner.encoder, bad)
    gated.gate.clear()
    return gated, Captioner(gated, captioner.decoder, captioner.vocabulary)


def _same(result, ref):
    assert result.caption == ref.caption
    assert [c.caption for c in result.candidates] == [c.caption for c in ref.candidates]
    # Batched BLAS may sum in another order than the single-row case: log-probs agree to float32 rounding.
    np.testing.assert_allclose(
        [c.log_prob for c in result.candidates], [c.log_prob for c in ref.candidates], rtol=1e-5, atol=1e-5
    )


def test_concurrent_results_equal_one_at_a_time_runs(captioner, images, reference):
    jobs = [(i % len(images), (GREEDY, BEAM)[(i // len(images)) % 2]) for i in range(48)]
    with MicroBatcher(captioner, max_batch_size=8, max_wait_ms=20) as batcher:
        with ThreadPoolExecutor(16) as pool:
            futures = list(pool.map(lambda job: batcher.submit(images[job[0]], job[1]), jobs))
        results = [f.result(timeout=60) for f in futures]
        stats = batcher.stats
    for job, result in zip(jobs, results, strict=True):
        _same(result, reference[job])
        assert set(result.timings_ms) >= {"encoder", "decoder", "queue"}
    assert stats.images == len(jobs) and stats.rejected == 0


def test_batches_form_under_concurrent_submission(captioner, images):
    n = 8
    barrier = threading.Barrier(n)

    def submit(i):
        barrier.wait()
        return batcher.submit(images[i % len(images)], GREEDY)

    with MicroBatcher(captioner, max_batch_size=n, max_wait_ms=300) as batcher:
        with ThreadPoolExecutor(n) as pool:
            futures = list(pool.map(submit, range(n)))
        for f in futures:
            f.result(timeout=60)
        stats = batcher.stats
    assert stats.images == n
    assert stats.mean_batch_size > 1 and stats.largest_batch <= n


def test_a_lone_request_on_an_idle_batcher_runs_at_once(captioner, images, reference):
    # One client at a time: nobody will join, so no request waits max_wait_ms (a minute here) for company.
    with MicroBatcher(captioner, max_batch_size=8, max_wait_ms=60_000) as batcher:
        for i in range(3):
            _same(
                batcher.submit(images[i % len(images)], GREEDY).result(timeout=30),
                reference[(i % len(images), GREEDY)],
            )
        assert batcher.stats.batches == 3


def test_after_a_shared_batch_a_lone_request_waits_for_company(captioner, images):
    # Closed-loop clients answered together rejoin one by one: the first waits for the others.
    gated, blocked = gated_captioner(captioner)
    with MicroBatcher(blocked, max_batch_size=2, max_wait_ms=60_000) as batcher:
        alone = batcher.submit(images[0], GREEDY)
        assert gated.entered.wait(10)  # the worker runs it alone and is held in encode()
        pair = [batcher.submit(images[i % len(images)], GREEDY) for i in (1, 2)]
        gated.gate.set()
        for f in [alone, *pair]:
            f.result(timeout=30)
        assert batcher.stats.largest_batch == 2
        lone = batcher.submit(images[0], GREEDY)
        threading.Event().wait(0.2)
        assert not lone.done()
        other = batcher.submit(images[1 % len(images)], GREEDY)  # fills the batch of 2: both run
        lone.result(timeout=30), other.result(timeout=30)
        assert batcher.stats.batches == 3


def test_queue_full_when_the_worker_is_blocked(captioner, images):
    gated, blocked = gated_captioner(captioner)
    batcher = MicroBatcher(blocked, max_batch_size=2, max_wait_ms=0, max_queue=3)
    try:
        first = [batcher.submit(images[0], GREEDY)]
        assert gated.entered.wait(10)  # the worker holds a batch and is stuck in encode()
        queued = [batcher.submit(images[i % len(images)], GREEDY) for i in range(3)]
        with pytest.raises(QueueFull, match="max_queue=3"):
            batcher.submit(images[0], GREEDY)
        assert batcher.stats.rejected == 1 and batcher.stats.queued == 3
    finally:
        gated.gate.set()
        batcher.close()
    for f in first + queued:
        assert f.result(timeout=60).caption is not None


def test_mixed_options_share_an_encoder_batch_but_not_a_search(captioner, images, reference):
    gated, blocked = gated_captioner(captioner)
    with MicroBatcher(blocked, max_batch_size=8, max_wait_ms=0) as batcher:
        batcher.submit(images[0], GREEDY)  # occupies the worker while the mixed batch queues up
        assert gated.entered.wait(10)
        jobs = [(i, opts) for i in range(len(images)) for opts in (GREEDY, BEAM)]
        futures = [batcher.submit(images[i], opts) for i, opts in jobs]
        gated.gate.set()
        results = [f.result(timeout=60) for f in futures]
        stats = batcher.stats
    for job, result in zip(jobs, results, strict=True):
        _same(result, reference[job])
        assert len(result.candidates) == job[1].n_best
    assert stats.batches == 2 and stats.largest_batch == len(jobs)
    assert stats.decode_groups == 1 + 2  # the first batch, then one search per distinct options


def test_an_error_fails_only_its_own_request(captioner, images, reference):
    bad = images[1].copy()
    gated, blocked = gated_captioner(captioner, bad=(bad,))
    with MicroBatcher(blocked, max_wait_ms=0) as batcher:
        batcher.submit(images[0], GREEDY)
        assert gated.entered.wait(10)
        good = [batcher.submit(images[i], GREEDY) for i in (0, 2, 3)]
        failed = batcher.submit(bad, GREEDY)
        gated.gate.set()
        with pytest.raises(ValueError, match="cannot be encoded"):
            failed.result(timeout=60)
        for i, f in zip((0, 2, 3), good, strict=True):
            _same(f.result(timeout=60), reference[(i, GREEDY)])


def test_close_drains_the_queue_and_refuses_new_work(captioner, images):
    batcher = MicroBatcher(captioner, max_batch_size=2, max_wait_ms=1000)
    futures = [batcher.submit(images[i % len(images)], GREEDY) for i in range(7)]
    batcher.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert batcher.stats.images == 7 and batcher.stats.queued == 0
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(images[0], GREEDY)
    batcher.close()  # idempotent


def test_cancelled_requests_are_skipped(captioner, images):
    gated, blocked = gated_captioner(captioner)
    with MicroBatcher(blocked, max_wait_ms=0) as batcher:
        batcher.submit(images[0], GREEDY)
        assert gated.entered.wait(10)
        cancelled, kept = batcher.submit(images[1], GREEDY), batcher.submit(images[2], GREEDY)
        assert cancelled.cancel()
        gated.gate.set()
        assert kept.result(timeout=60).caption is not None
    assert batcher.stats.images == 2


def test_async_caption(captioner, images, reference):
    async def main():
        with MicroBatcher(captioner, max_wait_ms=20) as batcher:
            return await asyncio.gather(*(batcher.caption(im, BEAM) for im in images))

    for i, result in enumerate(asyncio.run(main())):
        _same(result, reference[(i, BEAM)])


def test_a_batch_waits_for_an_announced_request(captioner, images, reference):
    # The service announces a request while its upload is read and its image decoded: the batch waits for it
    # (max_wait_ms alone would start at once), and both are captioned together, as one at a time.
    with MicroBatcher(captioner, max_batch_size=2, max_wait_ms=0, max_wait_expected_ms=60_000) as batcher:
        with batcher.expect() as arrival:
            first = batcher.submit(images[0], GREEDY)
            threading.Event().wait(0.2)
            assert not first.done() and batcher.stats.expected == 1
            second = arrival.submit(images[1], GREEDY)
            assert batcher.stats.expected == 0
        _same(first.result(timeout=30), reference[(0, GREEDY)])
        _same(second.result(timeout=30), reference[(1, GREEDY)])
        assert (batcher.stats.batches, batcher.stats.largest_batch) == (1, 2)


def test_a_withdrawn_announcement_ends_the_wait(captioner, images):
    with MicroBatcher(captioner, max_batch_size=4, max_wait_ms=0, max_wait_expected_ms=60_000) as batcher:
        arrival = batcher.expect()
        waiting = batcher.submit(images[0], GREEDY)
        threading.Event().wait(0.2)
        assert not waiting.done()
        arrival.cancel()  # e.g. its upload was not an image: nothing more is coming
        waiting.result(timeout=30)
        arrival.cancel()  # idempotent
        with batcher.expect():  # leaving the block unsubmitted withdraws it too
            pass
        assert batcher.stats.expected == 0
        batcher.submit(images[1], GREEDY).result(timeout=30)  # a lone request runs, no wait for anybody
        assert batcher.stats.batches == 2


def test_the_wait_for_announced_requests_is_bounded(captioner, images):
    with MicroBatcher(captioner, max_batch_size=4, max_wait_ms=0, max_wait_expected_ms=300) as batcher:
        with batcher.expect():  # announced, never submitted while the other waits
            waiting = batcher.submit(images[0], GREEDY)
            threading.Event().wait(0.05)
            assert not waiting.done()
            waiting.result(timeout=30)  # started after max_wait_expected_ms without it
        assert batcher.stats.batches == 1


def test_a_refused_announced_request_ends_its_announcement(captioner, images):
    gated, blocked = gated_captioner(captioner)
    batcher = MicroBatcher(blocked, max_batch_size=1, max_wait_ms=0, max_queue=1)
    try:
        running = batcher.submit(images[0], GREEDY)
        assert gated.entered.wait(10)
        queued = batcher.submit(images[1 % len(images)], GREEDY)
        with batcher.expect() as arrival, pytest.raises(QueueFull):
            arrival.submit(images[0], GREEDY)
        assert batcher.stats.expected == 0
    finally:
        gated.gate.set()
        batcher.close(timeout=30)
    running.result(timeout=30), queued.result(timeout=30)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_wait_ms": -1},
        {"max_queue": 0},
        {"max_wait_ms": 5, "max_wait_expected_ms": 1},
    ],
    ids=["batch", "wait", "queue", "expected"],
)
def test_invalid_settings_are_refused(captioner, kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[-1]):
        MicroBatcher(captioner, **kwargs)


# -- lanes: captioners with encoder sessions of their own, fed side by side --


def _batch_reference(captioner, images, options):
    """Each image's result when ``images`` run as one batch (the same batch shape, the same floats)."""
    encoded = captioner.encoder.run(images)
    return captioner.decode_features(encoded.features, options, encoded.imagenet_probs)


def test_batches_are_shared_between_the_lanes(captioner, images):
    gates = [gated_captioner(captioner) for _ in range(2)]
    jobs = [images[i % len(images)] for i in range(8)]
    with MicroBatcher(
        captioner, max_batch_size=8, max_wait_ms=2000, lanes=[lane for _, lane in gates]
    ) as batcher:
        assert batcher.lane_batch_size == 4
        futures = [batcher.submit(image, GREEDY) for image in jobs]
        for gated, _ in gates:  # both lanes hold a batch at the same time
            assert gated.entered.wait(10)
        for gated, _ in gates:
            gated.gate.set()
        results = [f.result(timeout=30) for f in futures]
        stats = batcher.stats
    assert stats.lane_batches == (1, 1) and stats.solo_batches == 0 and stats.largest_batch == 4
    # In arrival order, four to a lane.
    for result, ref in zip(results, [*_batch_reference(captioner, jobs[:4], GREEDY),
                                     *_batch_reference(captioner, jobs[4:], GREEDY)], strict=True):  # fmt: skip
        _same(result, ref)


def test_two_lone_requests_on_idle_lanes_run_side_by_side(captioner, images, reference):
    gates = [gated_captioner(captioner) for _ in range(2)]
    with MicroBatcher(
        captioner, max_batch_size=8, max_wait_ms=2000, lanes=[lane for _, lane in gates]
    ) as batcher:
        with batcher.expect() as a, batcher.expect() as b:  # both on their way: neither runs alone at once
            futures = [a.submit(images[0], GREEDY), b.submit(images[1], GREEDY)]
        for gated, _ in gates:  # one each, not both on one lane nor one on the whole captioner
            assert gated.entered.wait(10)
            gated.gate.set()
        for i, f in enumerate(futures):
            _same(f.result(timeout=30), reference[(i, GREEDY)])
        assert batcher.stats.lane_batches == (1, 1) and batcher.stats.solo_batches == 0


def test_a_lone_request_gets_the_whole_captioner_unless_a_lane_is_busy(captioner, images, reference):
    held, whole = gated_captioner(
        captioner
    )  # the batcher's own captioner, held while it runs the first request
    gates = [gated_captioner(captioner) for _ in range(2)]
    for gated, _ in gates:
        gated.gate.set()
    with MicroBatcher(whole, max_batch_size=8, max_wait_ms=0, lanes=[lane for _, lane in gates]) as batcher:
        first = batcher.submit(images[0], GREEDY)
        assert held.entered.wait(10)
        # While the first runs on the whole captioner, a second lone request runs on a lane, not behind it.
        _same(batcher.submit(images[1], GREEDY).result(timeout=30), reference[(1, GREEDY)])
        assert not first.done()
        held.gate.set()
        _same(first.result(timeout=30), reference[(0, GREEDY)])
        stats = batcher.stats
    assert stats.solo_batches == 1 and sum(stats.lane_batches) == 1


def test_an_image_a_lane_cannot_encode_fails_alone(captioner, images, reference):
    bad = images[1]
    lanes = [gated_captioner(captioner, bad=(bad,))[1] for _ in range(2)]
    for lane in lanes:
        lane.encoder.gate.set()
    with MicroBatcher(captioner, max_batch_size=4, max_wait_ms=2000, lanes=lanes) as batcher:
        futures = [batcher.submit(images[i], GREEDY) for i in range(4)]
        with pytest.raises(ValueError, match="cannot be encoded"):
            futures[1].result(timeout=30)
        for i in (0, 2, 3):
            _same(futures[i].result(timeout=30), reference[(i, GREEDY)])
