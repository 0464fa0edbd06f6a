"""Pure ASGI middleware: request context (id, timing, access log, metrics, last-resort 500) and the body limits
(size and deadline).

Pure ASGI rather than ``BaseHTTPMiddleware`` so that the body limit can count bytes as they stream in and stop
reading the moment the limit is passed, and so that nothing buffers a response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner.service.logs import request_id_var
from captioner.service.metrics import Metrics
from captioner.service.problems import MEDIA_TYPE, problem_body

access_log = logging.getLogger("captioner.service.access")
log = logging.getLogger("captioner.service")

# Not an HTTP status a client ever sees: nginx's convention for "the client closed the connection before the
# response", used in the access log and the request metrics so that disconnects are never counted as 5xx.
CLIENT_CLOSED_REQUEST = 499

# A client-sent X-Request-ID is reused only if it is short and harmless in logs and headers.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def send_problem(send: Send, status: int, slug: str, detail: str, request_id=None, headers=()) -> None:
    body = json.dumps(problem_body(status, slug, detail, request_id=request_id)).encode()
    raw = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """X-Request-ID in and out, X-Process-Time-ms + Server-Timing, X-Instance-ID (if set), a JSON access log
    line, request metrics, and a problem+json 500 (never a traceback) for any exception that escaped the app.
    A client that went away mid-request (e.g. mid-upload) is logged at info and counted as status 499."""

    def __init__(self, app: ASGIApp, metrics: Metrics, instance_id: str | None = None):
        self.app, self.metrics = app, metrics
        self.instance_header = [(b"x-instance-id", instance_id.encode())] if instance_id else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                elapsed_ms = (time.perf_counter() - start) * 1000
                extra = [
                    (b"x-request-id", request_id.encode()),
                    (b"x-process-time-ms", f"{elapsed_ms:.1f}".encode()),
                    (b"server-timing", f"app;dur={elapsed_ms:.1f}".encode()),
                    (b"x-content-type-options", b"nosniff"),
                    *self.instance_header,
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # Not the server's fault, and nobody to answer: no traceback, no 5xx.
            status = CLIENT_CLOSED_REQUEST
            self.metrics.client_disconnects.inc()
            log.info(
                "client disconnected before the request was read: %s %s",
                scope.get("method"),
                scope.get("path"),
            )
        except Exception:
            log.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
            status = 500
            if not started:
                await send_problem(
                    send_wrapper,
                    500,
                    "internal-error",
                    "the server failed on this request; it was logged with this request_id",
                    request_id,
                )
        finally:
            duration = time.perf_counter() - start
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(route_path, scope.get("method", ""), status, duration)
            client = scope.get("client")
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "route": route_path,
                        "status": status,
                        "duration_ms": round(duration * 1000, 2),
                        "client": client[0] if client else None,
                        "user_agent": headers.get(b"user-agent", b"").decode("latin-1")[:200],
                    }
                },
            )
            request_id_var.reset(token)


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies above ``limit_for(path)`` bytes with 413: at once when Content-Length says so,
    otherwise as soon as the streamed bytes pass the limit (chunked uploads, lying Content-Length). Refuse bodies
    that have not fully arrived ``timeout_s`` after the request started with 408 (stalled or trickled uploads).
    Both answers close the connection."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], metrics: Metrics, timeout_s: float):
        self.app, self.limit_for, self.metrics, self.timeout_s = app, limit_for, metrics, timeout_s

    def _detail(self, limit: int) -> str:
        return f"the request body is larger than {limit:,} bytes: send a smaller image (or fewer images)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        request_id = scope.get("state", {}).get("request_id")
        close = [(b"connection", b"close")]
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_problem(
                    send, 400, "bad-request", "the Content-Length header is not a number", request_id
                )
                return
            if declared > limit:
                self.metrics.rejected_upload("body_too_large")
                await send_problem(send, 413, "body-too-large", self._detail(limit), request_id, close)
                return
        received = 0
        body_done = False
        started = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect: no deadline on those
                return await receive()
            try:  # asyncio.timeout, not wait_for: no task per message (3.11's wait_for wraps the receive in one)
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
                body_done = not message.get("more_body", False)
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send_wrapper)
        except BodyTooLarge:
            self.metrics.rejected_upload("body_too_large")
            if not started:
                await send_problem(send, 413, "body-too-large", self._detail(limit), request_id, close)
        except BodyTimeout:
            self.metrics.rejected_upload("body_timeout")
            log.info("request body not received within %g s", self.timeout_s)
            if not started:
                detail = (
                    f"the request body did not arrive within {self.timeout_s:g} s (CAPTIONER_BODY_TIMEOUT_S): "
                    "upload faster or send a smaller file"
                )
                await send_problem(send, 408, "request-timeout", detail, request_id, close)
