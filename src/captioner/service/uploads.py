"""Uploaded images: multipart parsing in memory, bounded per request and across requests.

    body_limit_for(settings, path) -> int       # bytes a body may have on that route
    UploadBudget(max_bytes)                     # bytes of bodies being buffered at once, across all requests
    uploaded_files(request, state, ...)         # async context manager: reserve, parse, yield the files' bytes

A request reserves its Content-Length (or its route's body limit when it does not declare one) against the
budget before a byte of its body is read, and holds it until the request is done (the bytes stay referenced
until the caption is computed); a reservation that does not fit is refused with 503 at once, so stalled
uploads cannot pile up memory (each is also cut off by the body deadline, CAPTIONER_BODY_TIMEOUT_S).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from captioner.service.problems import ServiceError
from captioner.service.settings import MULTIPART_OVERHEAD_BYTES, Settings

if TYPE_CHECKING:
    from captioner.service.state import ServiceState

HINT = "send the image as multipart/form-data in a field named 'file', e.g. curl -F file=@photo.jpg"


def body_limit_for(settings: Settings, path: str) -> int:
    """Bytes a request body may have on ``path``: the files plus multipart overhead."""
    files = settings.max_batch_images if path.rstrip("/").endswith("generate-captions") else 1
    return settings.max_upload_bytes * files + MULTIPART_OVERHEAD_BYTES


class UploadBudget:
    """A byte counter that refuses rather than waits: ``try_reserve(n)`` is True and counts ``n`` if it fits.
    ``on_change(reserved)`` is told every new total (a metrics gauge)."""

    def __init__(self, max_bytes: int, on_change: Callable[[int], None] = lambda reserved: None):
        self.max_bytes, self.on_change = max_bytes, on_change
        self.reserved = 0
        self._lock = threading.Lock()

    def try_reserve(self, n: int) -> bool:
        with self._lock:
            if self.reserved + n > self.max_bytes:
                return False
            self.reserved += n
            self.on_change(self.reserved)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.reserved -= n
            self.on_change(self.reserved)


@asynccontextmanager
async def uploaded_files(
    request: Request, state: ServiceState, field_names: tuple[str, ...], max_files: int
) -> AsyncIterator[list[bytes]]:
    """The files' bytes in order, parsed entirely in memory (never a temp file), under a budget reservation.

    The client's filename and content type are ignored: the image type is sniffed from the bytes later.
    Raises ServiceError: 503 when the upload budget is full, 413/422 for bodies that are too large or malformed.
    """
    settings = state.settings
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        state.metrics.rejected_upload("not_multipart")
        raise ServiceError(422, "missing-file", f"no file was uploaded: {HINT}")
    body_limit = body_limit_for(settings, request.url.path)
    declared = request.headers.get("content-length", "")
    # The body-limit middleware has already refused a declared length above the limit (or not a number).
    reserve = min(int(declared), body_limit) if declared.isdigit() else body_limit
    if not state.uploads.try_reserve(reserve):
        state.metrics.rejected_upload("upload_buffer_full")
        raise ServiceError(
            503,
            "uploads-busy",
            "the server is receiving as many uploads as it buffers at once (CAPTIONER_MAX_UPLOAD_BUFFER_BYTES); "
            "retry in a few seconds",
            headers={"Retry-After": "2"},
        )
    try:
        yield await _parse(request, state, field_names, max_files, body_limit)
    finally:
        state.uploads.release(reserve)


async def _bounded_stream(request: Request, limit: int, state: ServiceState) -> AsyncGenerator[bytes, None]:
    """The request body, refused with 413 past ``limit`` bytes (the middleware does the same; belt and braces)."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            state.metrics.rejected_upload("body_too_large")
            raise ServiceError(413, "body-too-large", f"the request body is larger than {limit:,} bytes")
        yield chunk


async def _parse(
    request: Request, state: ServiceState, field_names: tuple[str, ...], max_files: int, body_limit: int
) -> list[bytes]:
    settings = state.settings
    parser = MultiPartParser(
        request.headers, _bounded_stream(request, body_limit, state), max_files=max_files + 1, max_fields=32
    )
    parser.spool_max_size = body_limit + 1  # the body is bounded, so no part ever rolls over to a disk file
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        state.metrics.rejected_upload("bad_multipart")
        if "Too many files" in str(exc):
            raise _too_many(max_files) from None
        raise ServiceError(422, "bad-multipart", f"the multipart body is malformed ({exc}): {HINT}") from None
    try:
        files: list[bytes] = []
        other: list[str] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name in field_names:
                    await value.seek(0)
                    data = await value.read()
                    if len(data) > settings.max_upload_bytes:
                        state.metrics.rejected_upload("file_too_large")
                        raise ServiceError(
                            413,
                            "file-too-large",
                            f"file {len(files) + 1} is {len(data):,} bytes; the limit is {settings.max_upload_bytes:,}"
                            " bytes per image: downscale or recompress it",
                        )
                    files.append(data)
                else:
                    other.append(name)
            elif name in field_names:
                raise ServiceError(
                    422,
                    "missing-file",
                    f"field '{name}' holds text, not a file upload: {HINT} (note the @ in curl's -F)",
                )
    finally:
        await form.close()
    if not files:
        state.metrics.rejected_upload("missing_file")
        got = f" (got a file in field {other[0]!r})" if other else ""
        raise ServiceError(
            422, "missing-file", f"no file was uploaded in field '{field_names[0]}'{got}: {HINT}"
        )
    if len(files) > max_files:
        raise _too_many(max_files)
    return files


def _too_many(max_files: int) -> ServiceError:
    if max_files == 1:
        return ServiceError(
            422,
            "too-many-files",
            "send exactly one file to this endpoint; use /generate-captions/ for several",
        )
    return ServiceError(
        413, "too-many-files", f"at most {max_files} files per request (CAPTIONER_MAX_BATCH_IMAGES)"
    )
