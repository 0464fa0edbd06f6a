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
    assert client.get("/health").json()["inference"]["micro_batching"] is None
    assert client.post(URL, files={"file": jpeg(seed=3)}).status_code == 200


def test_two_lanes_share_concurrent_requests(make_client):
    client = make_client(
        threads=2, inference_lanes=2, microbatch_max_size=8, microbatch_max_wait_ms=200, cache_max_entries=0
    )
    batcher = client.app.state.service.batcher
    captioner = client.app.state.service.captioner
    # Two lanes: the model shared, an encoder session of one thread each (not the captioner's own).
    assert len(batcher.lanes) == 2 and batcher.lane_batch_size == 4
    assert all(lane.decoder is captioner.decoder for lane in batcher.lanes)
    sessions = {id(lane.encoder.session) for lane in batcher.lanes} | {id(captioner.encoder.session)}
    assert len(sessions) == 3
    assert all(lane.encoder.session.get_session_options().intra_op_num_threads == 1 for lane in batcher.lanes)
    images = [jpeg(size=(80 + 8 * i, 64), seed=200 + i) for i in range(8)]
    assert client.post(URL, files={"file": images[0]}).status_code == 200
    assert batcher.stats.solo_batches == 1  # a lone request: the whole captioner
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(images))

    def send(i: int) -> None:
        barrier.wait()
        results[i] = client.post(URL, files={"file": images[i]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(len(images)))
    assert all(r.status_code == 200 and r.json()["caption"] for r in results.values())
    assert all(n > 0 for n in batcher.stats.lane_batches), batcher.stats  # both lanes captioned some
    # /health shows the same counters to an operator.
    shown = client.get("/health").json()["inference"]["micro_batching"]
    stats = batcher.stats
    assert shown["images"] == stats.images == 9 and shown["batches"] == stats.batches < 9
    assert shown["lane_batches"] == list(stats.lane_batches) and shown["solo_batches"] == stats.solo_batches
    assert shown["mean_batch_size"] == pytest.approx(9 / stats.batches, abs=1e-3)
    assert shown["largest_batch"] == stats.largest_batch > 1


def test_one_lane_is_the_captioner_itself(make_client):
    client = make_client(threads=2, inference_lanes=1)
    service = client.app.state.service
    assert service.batcher.lanes == [service.captioner]
    assert client.post(URL, files={"file": jpeg(seed=4)}).status_code == 200
