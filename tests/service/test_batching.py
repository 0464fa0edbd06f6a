"""Dynamic micro-batching: concurrent single-image requests share encoder and decoder batches, same answers."""

from __future__ import annotations

import threading

import pytest
from service_inputs import jpeg

URL = "/generate-caption/"


def test_concurrent_requests_are_batched_and_answer_like_one_at_a_time(make_client):
    client = make_client(
        microbatch_max_size=8, microbatch_max_wait_ms=50, cache_max_entries=0, rate_limit_per_minute=0
    )
    images = [jpeg(size=(80 + 8 * i, 64), seed=100 + i) for i in range(8)]
    params = {"beam_size": 3, "n_best": 2}
    # One at a time first (each request is its own batch): the reference answers.
    reference = [client.post(URL, params=params, files={"file": img}).json() for img in images]
    batcher = client.app.state.service.batcher
    before = batcher.stats.batches
    results: dict[int, dict] = {}
    barrier = threading.Barrier(len(images))

    def send(i: int) -> None:
        barrier.wait()
        results[i] = client.post(URL, params=params, files={"file": images[i]}).json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(images)
    for i, ref in enumerate(reference):
        assert results[i]["caption"] == ref["caption"]
        assert [c["caption"] for c in results[i]["candidates"]] == [c["caption"] for c in ref["candidates"]]
        for got, want in zip(results[i]["candidates"], ref["candidates"], strict=True):
            # Float sums in another batch shape: equal up to rounding, relative for the long, unlikely captions.
            assert got["log_prob"] == pytest.approx(want["log_prob"], rel=1e-4, abs=1e-3)
    batches = batcher.stats.batches - before
    assert batches < len(images), f"{len(images)} concurrent requests ran as {batches} batches: no batching"


def test_every_request_ends_its_announcement_to_the_batcher(make_client):
    # Each request is announced before its upload is read (the batch waits for it): whatever its fate it must
    # end the announcement, or every later lone request would wait CAPTIONER_MICROBATCH_MAX_WAIT_EXPECTED_MS.
    client = make_client(microbatch_max_size=8, microbatch_max_wait_expected_ms=1000, rate_limit_per_minute=0)
    batcher = client.app.state.service.batcher
    image = jpeg(seed=21)
    assert client.post(URL, files={"file": image}).status_code == 200
    assert client.post(URL, files={"file": image}).headers["X-Cache"] == "HIT"
    assert client.post(URL, files={"file": b"not an image at all"}).status_code == 415
    assert client.post(URL, files={"other": image}).status_code == 422
    assert client.post(URL, params={"beam_size": 0}, files={"file": image}).status_code == 422
    assert batcher.stats.expected == 0
    assert client.post(URL, files={"file": jpeg(seed=22)}).status_code == 200  # a lone request: no wait


def test_batching_can_be_turned_off(make_client):
    client = make_client(microbatch_max_size=1)
    assert client.app.state.service.batcher is None
    assert client.post(URL, files={"file": jpeg(seed=3)}).status_code == 200
