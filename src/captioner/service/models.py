"""The served model and the one before it: a new model is loaded and warmed aside, then swapped in atomically.

A request reads ``ModelSlot.active`` once (one attribute read) and uses that ``ServedModel`` to the end, so a
switch never changes the model under a request: requests in flight finish on the old model, new ones start on
the new one, and none fails. The previous model stays loaded for an immediate rollback; the one before it is
closed once the requests that may still hold it have had ``retire_after_s`` to finish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from captioner.decode.captioner import Captioner, CaptionResult
from captioner.decode.microbatch import Arrival, MicroBatcher, QueueFull
from captioner.service.problems import ServiceError

log = logging.getLogger("captioner.service")


@dataclass(frozen=True)
class ServedModel:
    """A loaded, warmed captioner and its micro-batcher (None: micro-batching off)."""

    captioner: Captioner
    batcher: MicroBatcher | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.captioner.version

    @property
    def cache_identity(self) -> str:
        """What the result cache keys on: the version (the decoders that caption) and, for a bundle, its digest,
        which covers every file (a new labels.json or consensus.npz changes captions but not the weights)."""
        info = self.captioner.model_info
        digest = info.sha256 if info is not None else None
        return f"{self.version}:{digest}" if digest else self.version

    def expect(self) -> Arrival | None:
        """Announce to the micro-batcher a request whose image is on its way (None: micro-batching off)."""
        return None if self.batcher is None else self.batcher.expect()

    def caption_one(self, image, options, arrival: Arrival | None = None) -> CaptionResult:
        """One decoded image -> its result, through the micro-batcher when enabled (blocks the calling thread).
        arrival: this request's announcement from ``expect()``, if it made one."""
        if self.batcher is None:
            return self.captioner.caption_images([image], options)[0]
        try:
            future = (arrival or self.batcher).submit(image, options)
        except QueueFull:
            raise ServiceError(
                503, "overloaded", "the server is busy: too many images waiting; retry in a moment",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        return future.result()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close(timeout=5)


class SwitchInProgress(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            409, "switch-in-progress", "a model switch is already running; retry when it is done"
        )


class ModelSlot:
    """The active model, the previous one, and the switch between them.

    build: loads and warms a new ServedModel from the configured model path (raises on a broken or tampered
    model). retire_after_s: how long a model that is neither active nor previous stays open (the request
    timeout: a request that read it before a switch has that long to finish).
    """

    def __init__(self, build: Callable[[], ServedModel], retire_after_s: float = 30.0):
        self._build = build
        self.retire_after_s = retire_after_s
        self.active: ServedModel | None = None
        self.previous: ServedModel | None = None
        self._switching = threading.Lock()  # one load at a time
        self._swap = threading.Lock()  # active/previous change together

    def load(self, served: ServedModel | None = None) -> ServedModel:
        """The first model (``served`` if given, else built); no previous one."""
        self.active = served or self._build()
        return self.active

    def switch(self) -> ServedModel:
        """Build a new model and make it active; the old active one becomes previous. On any failure the old
        model keeps serving and the error is raised (SwitchInProgress if another switch is running)."""
        if not self._switching.acquire(blocking=False):
            raise SwitchInProgress()
        try:
            start = time.perf_counter()
            new = self._build()
            with self._swap:
                retired, self.previous, self.active = self.previous, self.active, new
            log.info(
                "model switched in %.1f s: %s (previous %s)",
                time.perf_counter() - start,
                new.version,
                self.previous.version if self.previous else None,
            )
        finally:
            self._switching.release()
        self._retire(retired)
        return new

    def rollback(self) -> ServedModel:
        """Make the previous model active again (and the active one previous)."""
        with self._swap:
            if self.previous is None:
                raise ServiceError(409, "no-previous-model", "there is no previous model to roll back to")
            self.active, self.previous = self.previous, self.active
            active = self.active
        log.info("model rolled back to %s", active.version)
        return active

    def versions(self) -> dict[str, str | None]:
        with self._swap:
            return {
                "active": self.active.version if self.active else None,
                "previous": self.previous.version if self.previous else None,
            }

    def _retire(self, served: ServedModel | None) -> None:
        if served is None or served is self.active or served is self.previous:
            return
        timer = threading.Timer(self.retire_after_s, served.close)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        with self._swap:
            models = {id(m): m for m in (self.active, self.previous) if m is not None}
        for served in models.values():
            served.close()
