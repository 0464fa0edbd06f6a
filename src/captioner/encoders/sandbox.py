"""Image decoding in worker processes that can be stopped, under a memory budget shared by all decodes.

    pool = DecodePool(workers=2, timeout_s=10.0, memory_budget_bytes=192 * 2**20)
    image = pool.load(data, max_pixels=25_000_000, draft_size=260, wait_s=30.0)  # RGB, reduced as load_image does
    pool.close()

Why processes: a decoder stuck in a hostile file (a progressive JPEG with thousands of scans) cannot be
interrupted inside a thread; a worker that passes ``timeout_s`` is killed (SIGKILL), its memory and CPU are freed
at once, the caller gets ``ImageTooComplex`` and a fresh worker takes its place in the background. Workers are
reused, not started per image. Each is a new interpreter (not a fork), so it inherits no onnxruntime threads or
model memory, and runs ``images.load_image`` only.

Memory: before a decode starts, the header says how many bytes its pixels take (``images.inspect_image``); that
many bytes of ``memory_budget_bytes`` are held until it ends, so decodes that together exceed the budget wait
(at most ``wait_s``) and an image that alone exceeds it is refused with ``ImageTooLarge``. Each worker's data
segment is also capped (RLIMIT_DATA: its size at start + the budget + 64 MiB), so a decode that needs more than
its header said fails with MemoryError -> ``ImageTooLarge`` instead of growing the container.

Protocol over a socketpair: JSON headers and raw RGB bytes, never pickle (a worker handles hostile bytes, so the
parent trusts nothing from it but a size and pixels it checks).

Small sequential JPEGs decode in the calling thread (``inline_max_pixels``, ``inline_max_bytes``; 0 turns it
off): a JPEG that is not progressive is decoded in one pass, so its work is bounded by its declared pixels and
its bytes whatever they hold (measured on 2 cores: random pixels at the service's limits, 2 MP and 1 MiB, ~9 ms;
a 500 x 375 photo ~0.5 ms), and the hand-over to a worker and back costs more than the decode itself (~1-3 ms a
request over HTTP, bench/README.md). The same decoding code as ``load_image`` (the header read once), so the
same pixels and errors; the memory budget applies alike. Everything else (progressive JPEGs, whose scans are unbounded, PNG, WebP, GIF, BMP, and larger
JPEGs) goes to a worker.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import resource
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from PIL import Image

from captioner.encoders.images import (
    DEFAULT_MAX_PIXELS,
    ImageHeader,
    Resize,
    decode_opened,
    load_image,
    open_image,
)
from captioner.errors import (
    ImageError,
    ImageTooComplex,
    ImageTooLarge,
    UnsupportedImageType,
    without_addresses,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
WORKER_OVERHEAD_BYTES = 64 * MiB  # strips being converted and the reduced output, on top of the decoded image
_ERRORS = {c.__name__: c for c in (ImageError, UnsupportedImageType, ImageTooLarge)}
_START_TIMEOUT_S = 60.0


class DecodeBusy(TimeoutError):
    """No worker or not enough of the memory budget came free within the caller's wait."""


class MemoryBudget:
    """Bytes that may be held at once; ``acquire`` blocks until enough are free or the wait is over."""

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self.used + n > self.total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class _Worker:
    """One decoding process and the parent's end of its socket."""

    def __init__(self, memory_limit_bytes: int):
        parent, child = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
        code = "from captioner.encoders.sandbox import serve; import sys; serve(int(sys.argv[1]), int(sys.argv[2]))"
        try:
            # A session of its own: a Ctrl-C in the terminal reaches the server, which closes its workers.
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(child.fileno()), str(memory_limit_bytes)],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float) -> bool:
        return self.conn.poll(timeout_s) and json.loads(self.conn.recv_bytes(1024)).get("ready") is True

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.conn.close()


class DecodePool:
    """``workers`` reusable decoding processes, ``timeout_s`` per image, ``memory_budget_bytes`` across all;
    sequential JPEGs of at most ``inline_max_pixels`` declared pixels and ``inline_max_bytes`` bytes decode in
    the calling thread (module docstring; 0: never).

    Thread-safe: any number of threads may call ``load``; at most ``workers`` images decode at once in workers.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 10.0,
        memory_budget_bytes: int = 192 * MiB,
        inline_max_pixels: int = 0,
        inline_max_bytes: int = 0,
    ):
        if (
            workers < 1
            or timeout_s <= 0
            or memory_budget_bytes < 1
            or min(inline_max_pixels, inline_max_bytes) < 0
        ):
            raise ValueError(
                f"DecodePool needs workers >= 1, timeout_s > 0, memory_budget_bytes >= 1 and inline limits >= 0, "
                f"got {workers}, {timeout_s}, {memory_budget_bytes}, {inline_max_pixels}, {inline_max_bytes}"
            )
        self.inline_max_pixels, self.inline_max_bytes = inline_max_pixels, inline_max_bytes
        self.inline_decodes = 0  # decoded in the calling thread (the rest went to workers)
        self.workers, self.timeout_s = workers, timeout_s
        self.budget = MemoryBudget(memory_budget_bytes)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(workers):
            self._start_worker()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (a killed worker's replacement has a new one)."""
        with self._lock:
            return sorted(w.pid for w in self._all)

    def wait_ready(self, timeout_s: float = _START_TIMEOUT_S) -> bool:
        """True once every worker has started (the pool can decode ``workers`` images at once)."""
        deadline = time.monotonic() + timeout_s
        while self._idle.qsize() < self.workers:
            if time.monotonic() > deadline or self._closed:
                return False
            time.sleep(0.01)
        return True

    def load(
        self,
        data: bytes,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft_size: int | None = None,
        resize: Resize = "squash",
        wait_s: float = 30.0,
    ) -> Image.Image:
        """``images.load_image(data, max_pixels, draft_size, resize)`` in a worker (small sequential JPEGs: here).

        wait_s: how long to wait for a worker and for the memory budget (the decode itself has timeout_s).
        Raises ImageError (its subclasses ImageTooLarge: above the pixel limit or the memory budget;
        ImageTooComplex: the decode passed timeout_s), or DecodeBusy when the wait is over first.
        """
        if self._closed:
            raise RuntimeError("the DecodePool is closed")
        header, opened = open_image(data, max_pixels, draft_size)  # the header only: cheap, and refuses early
        need = header.decode_bytes
        if need > self.budget.total:
            raise ImageTooLarge(
                f"decoding this {header.width}x{header.height} {header.format} image ({header.mode}) needs "
                f"{need / MiB:.0f} MiB; the decoding memory budget is {self.budget.total / MiB:.0f} MiB: "
                "downscale it before sending"
            )
        deadline = time.monotonic() + wait_s
        if not self.budget.acquire(need, wait_s):
            raise DecodeBusy(f"the decoding memory budget stayed in use for {wait_s:.1f} s")
        try:
            if self.inline(header, len(data)):
                with self._lock:
                    self.inline_decodes += 1
                return decode_opened(opened, header.format, max_pixels, draft_size, resize)
            try:
                worker = self._idle.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise DecodeBusy(f"no decoding worker came free within {wait_s:.1f} s") from None
            return self._run(worker, data, max_pixels, draft_size, resize)
        finally:
            self.budget.release(need)

    def inline(self, header: ImageHeader, size: int) -> bool:
        """Whether an image with this header and this many bytes decodes in the calling thread."""
        return (
            header.sequential_jpeg
            and header.declared_pixels <= self.inline_max_pixels
            and size <= self.inline_max_bytes
        )

    def close(self) -> None:
        """Stop every worker. Idempotent."""
        self._closed = True
        with self._lock:
            workers, self._all = list(self._all), set()
        for w in workers:
            w.kill()

    # -- internals --

    def _run(self, worker: _Worker, data: bytes, max_pixels: int, draft_size, resize) -> Image.Image:
        try:
            request = {"max_pixels": max_pixels, "draft_size": draft_size, "resize": resize}
            worker.conn.send_bytes(json.dumps(request).encode())
            worker.conn.send_bytes(data)
            if not worker.conn.poll(self.timeout_s):
                self._replace(worker)
                raise ImageTooComplex(
                    f"decoding the image took longer than {self.timeout_s:g} s and was stopped: it is too complex "
                    "to decode (e.g. a JPEG with very many scans); re-encode it (a baseline JPEG or PNG) and retry"
                )
            reply = json.loads(worker.conn.recv_bytes(4096))
            if "error" in reply:
                self._idle.put(worker)
                raise _ERRORS.get(reply["error"], ImageError)(str(reply["message"]))
            width, height = (int(v) for v in reply["size"])
            pixels = worker.conn.recv_bytes(width * height * 3 + 1)
        except (EOFError, OSError, ValueError, KeyError, TypeError):
            # The worker died (a crash in a decoder, or killed for memory) or sent nonsense: it is not reused.
            self._replace(worker)
            raise ImageError(
                "the image cannot be decoded: the decoder stopped on it; re-encode it and retry"
            ) from None
        self._idle.put(worker)
        return Image.frombytes("RGB", (width, height), pixels)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)
        if not self._closed:
            self._start_worker()

    def _start_worker(self) -> None:
        """Start a worker now; it joins the idle queue from a thread once it says it is ready."""
        worker = _Worker(self.budget.total + WORKER_OVERHEAD_BYTES)
        with self._lock:
            self._all.add(worker)

        def announce() -> None:
            try:
                ready = worker.wait_ready(_START_TIMEOUT_S)
            except (EOFError, OSError, ValueError):
                ready = False
            if ready and not self._closed:
                self._idle.put(worker)
                return
            if not self._closed:
                log.error(
                    "a decoding worker did not start (exit code %s); starting another", worker.process.poll()
                )
                with self._lock:
                    self._all.discard(worker)
                worker.kill()
                time.sleep(1.0)
                self._start_worker()

        threading.Thread(target=announce, name="captioner-decode-start", daemon=True).start()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the worker process --


def _data_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def serve(fd: int, memory_limit_bytes: int) -> None:
    """The worker's loop: (request JSON, image bytes) -> (reply JSON, RGB bytes), until the parent hangs up."""
    conn = Connection(fd)
    load_image(_tiny_png(), draft_size=8)  # import the decoders before measuring the data segment
    with contextlib.suppress(ValueError, OSError):  # a hard cap: the header's estimate could be wrong
        resource.setrlimit(resource.RLIMIT_DATA, (_data_bytes() + memory_limit_bytes,) * 2)
    conn.send_bytes(json.dumps({"ready": True}).encode())
    while True:
        try:
            request = json.loads(conn.recv_bytes())
            data = conn.recv_bytes()
        except EOFError:
            return
        try:
            image = load_image(data, request["max_pixels"], request["draft_size"], request["resize"])
            pixels = image.tobytes()
        except MemoryError:
            error: dict | None = {
                "error": "ImageTooLarge",
                "message": "decoding the image needs more memory than the decoding memory budget allows: "
                "downscale it before sending",
            }
        except ImageError as exc:
            error = {"error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a decoder's unexpected error is still the image's fault
            error = {
                "error": "ImageError",
                "message": f"the image cannot be decoded ({without_addresses(str(exc))})",
            }
        else:
            error = None
        if error is not None:
            conn.send_bytes(json.dumps(error).encode())
            continue
        conn.send_bytes(json.dumps({"size": list(image.size)}).encode())
        conn.send_bytes(pixels)
        del image, pixels, data


def _tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(out, "PNG")
    return out.getvalue()
