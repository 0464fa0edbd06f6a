"""Dynamic micro-batching: concurrent single-image requests run as one encoder batch and one decoding batch.

    batcher = MicroBatcher(captioner, max_batch_size=8, max_wait_ms=5.0, max_queue=64, max_wait_expected_ms=20)
    future = batcher.submit(image, options)        # from any thread; QueueFull at once when the queue is full
    result = future.result()                       # a CaptionResult, the same as captioner.caption_images([image])
    result = await batcher.caption(image, options) # from asyncio code
    with batcher.expect() as arrival:              # a request on its way (its upload is read, its image decoded)
        future = arrival.submit(image, options)    # ... joins; leaving the block unsubmitted withdraws it

A worker thread (one per lane, below) takes requests in arrival order. It starts a batch when
``max_batch_size`` requests are waiting, or ``max_wait_ms`` after the later of the oldest request's arrival and
the end of its previous batch, whichever comes first. Measuring the wait from the end of the previous batch too
lets the callers just answered rejoin (closed-loop clients resubmit within a millisecond or two): without it, 8
clients on a batcher of 8 settle into alternating half-full batches. The wait adds at most ``max_wait_ms`` to a
request's latency.

A lone request when the previous batch was a lone request too (no two requests have overlapped: one client at
a time, or the first request after start) runs at once: nobody is about to join it, and waiting would only add
``max_wait_ms`` to every answer of an unloaded service. Under load the rule does not fire, and a lone batch that
happens anyway is followed by a full one (the others queued while it ran).

Expected arrivals: a caller that knows a request is on its way before its image is ready (the service, while it
reads the upload and decodes the image in a worker: 10-20 ms for 8 requests answered together on 2 cores)
announces it with ``expect()``. When ``max_wait_ms`` has passed and announced requests are still on their way,
the batch waits for them too, until it is full, none is left on its way, or ``max_wait_expected_ms`` has passed
(from the same starting point); it never waits for an announced request that is withdrawn or beyond that bound.
A lone request waits too when others are announced. Without announcements nothing changes. Measured over HTTP
with 8 closed-loop clients (bench/README.md): batches of 8 instead of alternating 5 and 3, since the clients'
next images take longer than ``max_wait_ms`` to arrive.

The images of a batch go through the encoder together (options do not matter there); requests with identical
``DecodeOptions`` share one search, others get a search per distinct options. An error fails only the requests
it belongs to.

Lanes: with one captioner, a batch's search (Python under the GIL, one core) leaves the other cores idle while
the encoder waits for it. ``lanes`` are captioners that share the model but each have their own encoder session
with a share of the cores (``Captioner.with_encoder``): one worker thread per lane takes batches of up to
``ceil(max_batch_size / lanes)``, so one lane encodes (onnxruntime, no GIL) while another searches. A lone request
while every other lane is idle runs on ``captioner`` itself (all its encoder threads for one image). Measured over
HTTP on 2 cores with 8 clients (bench/README.md): two one-thread lanes serve 1.1-1.2x the requests of one two-thread
captioner; a lane in a worker process of its own (no shared GIL) did no better than a thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from captioner.decode.captioner import Captioner, CaptionResult
from captioner.decode.options import DecodeOptions
from captioner.encoders.runtime import EncoderOutput


class QueueFull(Exception):
    """More than ``max_queue`` requests are waiting: shed load (HTTP 503) instead of queueing without bound."""


@dataclass(frozen=True)
class BatcherStats:
    """Counters since the batcher started. mean_batch_size = images / batches (encoder batches)."""

    batches: int
    images: int
    decode_groups: int
    rejected: int
    largest_batch: int
    queued: int
    expected: int  # announced by expect(), neither submitted nor withdrawn yet
    lane_batches: tuple[int, ...]  # batches each lane ran
    solo_batches: int  # lone requests run on the captioner itself while every other lane was idle

    @property
    def mean_batch_size(self) -> float:
        return self.images / self.batches if self.batches else 0.0


@dataclass
class _Request:
    image: Image.Image
    options: DecodeOptions
    future: Future
    enqueued: float  # time.perf_counter() at submit


class Arrival:
    """A request announced by ``MicroBatcher.expect()``: submit its image once, or withdraw it (``cancel()``,
    or leaving the ``with`` block without submitting). Either ends the announcement; both are idempotent."""

    def __init__(self, batcher: MicroBatcher):
        self._batcher, self._open = batcher, True

    def submit(self, image: Image.Image, options: DecodeOptions = DecodeOptions()) -> Future[CaptionResult]:
        """``MicroBatcher.submit``, ending the announcement in the same step (the worker never sees it twice)."""
        open_, self._open = self._open, False
        return self._batcher.submit(image, options, _announced=open_)

    def cancel(self) -> None:
        if self._open:
            self._open = False
            self._batcher._withdraw()

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class MicroBatcher:
    """Gathers concurrent caption requests into batches for one Captioner; see the module docstring.

    max_batch_size: most images per encoder batch (with several lanes, shared between them). max_wait_ms: how long
    the oldest waiting request may wait for others to join before its batch starts. max_queue: most requests
    waiting to start (a running batch is not counted); one more raises QueueFull. max_wait_expected_ms: how long it
    may wait while requests announced by ``expect()`` are still on their way (at least max_wait_ms; None: as
    max_wait_ms). lanes: captioners that run batches side by side, each fed by its own worker thread (see the
    module docstring); None: one lane, ``captioner`` itself.
    """

    def __init__(
        self,
        captioner: Captioner,
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        max_wait_expected_ms: float | None = None,
        lanes: Sequence[Captioner] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if max_wait_expected_ms is None:
            max_wait_expected_ms = max_wait_ms
        if max_wait_expected_ms < max_wait_ms:
            raise ValueError(
                f"max_wait_expected_ms ({max_wait_expected_ms}) must be at least max_wait_ms ({max_wait_ms})"
            )
        self.captioner = captioner
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self.max_wait_expected_s = max_wait_expected_ms / 1000
        self.lanes: list[Captioner] = list(lanes) if lanes else [captioner]
        self.lane_batch_size = -(-max_batch_size // len(self.lanes))  # ceil: the lanes share max_batch_size
        self._expected = 0  # announced by expect(), neither submitted nor withdrawn yet
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running = 0  # lanes running a batch
        self._last_size = 0  # requests in the last batch a lane finished (0 before the first)
        self._batches = self._images = self._groups = self._rejected = self._largest = self._solo = 0
        self._lane_batches = [0] * len(self.lanes)
        self._workers = [
            threading.Thread(target=self._run, args=(i,), name=f"captioner-batcher-{i}", daemon=True)
            for i in range(len(self.lanes))
        ]
        for worker in self._workers:
            worker.start()

    # -- public API --

    def expect(self) -> Arrival:
        """Announce a request whose image is on its way; see the module docstring. Use the result in a ``with``
        block and submit through it."""
        with self._cond:
            self._expected += 1
        return Arrival(self)

    def _withdraw(self) -> None:
        with self._cond:
            self._expected -= 1
            self._cond.notify_all()

    def submit(
        self, image: Image.Image, options: DecodeOptions = DecodeOptions(), *, _announced: bool = False
    ) -> Future[CaptionResult]:
        """Queue one RGB image; the future gets its CaptionResult or the exception that caption raised.

        Raises QueueFull at once when max_queue requests are waiting, RuntimeError after close().
        """
        future: Future[CaptionResult] = Future()
        with self._cond:
            if _announced:
                self._expected -= 1
                self._cond.notify_all()  # a refusal below still ends the announcement
            if self._closed:
                raise RuntimeError("the MicroBatcher is closed; create a new one to caption more images")
            if len(self._pending) >= self.max_queue:
                self._rejected += 1
                raise QueueFull(
                    f"{len(self._pending)} captioning requests are already waiting (max_queue={self.max_queue}); "
                    "retry in a moment"
                )
            self._pending.append(_Request(image, options, future, time.perf_counter()))
            self._cond.notify_all()
        return future

    async def caption(self, image: Image.Image, options: DecodeOptions = DecodeOptions()) -> CaptionResult:
        """submit() for asyncio code: awaits the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(image, options))

    @property
    def stats(self) -> BatcherStats:
        with self._cond:
            return BatcherStats(
                self._batches, self._images, self._groups, self._rejected, self._largest, len(self._pending),
                self._expected, tuple(self._lane_batches), self._solo,
            )  # fmt: skip

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish every queued one, stop the workers. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        current = threading.current_thread()
        for worker in self._workers:
            if worker is not current:
                worker.join(timeout)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the workers, one per lane --

    def _run(self, lane: int) -> None:
        free_since = 0.0  # perf_counter() when this lane finished its last batch
        while True:
            taken = self._next_batch(free_since)
            if taken is None:
                return
            batch, alone = taken
            try:
                self._run_batch(batch, lane, alone)
            except BaseException as exc:  # noqa: BLE001 - a bug here must not strand callers or kill the worker
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
            finally:
                with self._cond:
                    self._running -= 1
                    self._last_size = len(batch)
            free_since = time.perf_counter()

    def _next_batch(self, free_since: float) -> tuple[list[_Request], bool] | None:
        """Block until a batch is due for a lane that became free at ``free_since``: (its requests, whether it is
        all the work there is: every other lane idle, nothing else waiting); None once closed and drained."""
        with self._cond:
            while True:
                while not self._pending:
                    if self._closed:
                        return None
                    self._cond.wait()
                if len(self._pending) == 1 and self._last_size <= 1 and self._expected == 0:
                    break  # nothing overlaps it: waiting would only add latency
                since = max(self._pending[0].enqueued, free_since)
                while len(self._pending) < self.lane_batch_size and not self._closed:
                    # Past max_wait_ms, only requests announced and still on their way are worth waiting for.
                    limit = self.max_wait_expected_s if self._expected > 0 else self.max_wait_s
                    remaining = since + limit - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._pending:  # (another lane may have taken them all while this one waited)
                    break
            # An equal share for each idle lane, so that two requests on two idle lanes run side by side.
            idle = len(self.lanes) - self._running
            n = min(len(self._pending), self.lane_batch_size, -(-len(self._pending) // idle))
            batch = [self._pending.popleft() for _ in range(n)]
            alone = self._running == 0 and not self._pending  # nothing else running or waiting to
            self._running += 1
            if self._pending:
                self._cond.notify_all()  # an idle lane may take the rest now
            return batch, alone

    def _run_batch(self, batch: list[_Request], lane: int, alone: bool) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        # A lone image while the other lanes idle gets the whole captioner (every encoder thread).
        solo = alone and len(live) == 1 and len(self.lanes) > 1
        captioner = self.captioner if solo else self.lanes[lane]
        start = time.perf_counter()
        encoded, ok = self._encode(captioner, live)
        enc_ms = (time.perf_counter() - start) * 1000 / len(live)
        groups: dict[DecodeOptions, list[int]] = {}
        for i in ok:
            groups.setdefault(live[i].options, []).append(i)
        for options, idx in groups.items():
            try:
                probs = None if encoded.imagenet_probs is None else encoded.imagenet_probs[idx]
                results = captioner.decode_features(encoded.features[idx], options, probs)
            except Exception as exc:  # noqa: BLE001 - belongs to this options group's callers only
                for i in idx:
                    live[i].future.set_exception(exc)
                continue
            for i, r in zip(idx, results, strict=True):
                queue_ms = (start - live[i].enqueued) * 1000
                timings = {"encoder": enc_ms, **r.timings_ms, "queue": queue_ms}
                live[i].future.set_result(replace(r, timings_ms=timings))
        with self._cond:
            self._batches += 1
            self._images += len(live)
            self._groups += len(groups)
            self._largest = max(self._largest, len(live))
            if solo:
                self._solo += 1
            else:
                self._lane_batches[lane] += 1

    @staticmethod
    def _encode(captioner: Captioner, live: list[_Request]) -> tuple[EncoderOutput, list[int]]:
        """Encoder outputs for all of ``live`` (rows [len(live), ...]) and the indices that have them; a failed
        image fails only its own future.

        The whole batch is tried first; if that raises, each image is encoded alone to find the culprit(s).
        """
        encoder = captioner.encoder
        try:
            return encoder.run([r.image for r in live]), list(range(len(live)))
        except Exception as exc:  # noqa: BLE001
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return EncoderOutput(np.zeros((1, 0), np.float32)), []
        rows: list[EncoderOutput | None] = []
        for r in live:
            try:
                rows.append(encoder.run([r.image]))
            except Exception as exc:  # noqa: BLE001
                r.future.set_exception(exc)
                rows.append(None)
        ok = [i for i, row in enumerate(rows) if row is not None]
        if not ok:
            return EncoderOutput(np.zeros((len(live), 0), np.float32)), []
        first: EncoderOutput = rows[ok[0]]  # type: ignore[assignment]
        features = np.zeros((len(live), first.features.shape[1]), np.float32)
        probs = None if first.imagenet_probs is None else np.zeros((len(live), first.imagenet_probs.shape[1]))
        for i in ok:
            features[i] = rows[i].features[0]  # type: ignore[union-attr]
            if probs is not None:
                probs[i] = rows[i].imagenet_probs[0]  # type: ignore[union-attr,index]
        return EncoderOutput(features, None if probs is None else probs.astype(np.float32)), ok
