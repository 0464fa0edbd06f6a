"""The production HTTP server: uvicorn with the httptools parser, plus the connection limits uvicorn lacks.

    server_config(app, settings) -> uvicorn.Config    # every entry point serves through this
    serve(app, settings)                              # run it (blocks until SIGINT/SIGTERM)

uvicorn's own options give the keep-alive idle timeout (``timeout_keep_alive``), the connection limit
(``limit_concurrency``: 503 past it) and which peers may set X-Forwarded-For. What it lacks with httptools is a
bound on the request head: no size limit (an 8 MiB header is accepted) and no deadline (a client that trickles
one header line every few seconds keeps its connection forever). ``HardenedHttpToolsProtocol`` adds both:

- a TOTAL deadline for the request head, from the connection's first moment (or the next request's first byte on
  a kept-alive connection) to the end of its headers: 408 and close when it passes;
- a size limit on the request head (request line + headers): 431 and close past it, counted as bytes arrive, so
  no more than one read (at most 256 KiB) past the limit is ever held;
- a connection whose request body was not read to the end is closed after the response instead of kept alive
  (so that a stalled body cannot hold it open by dripping bytes past the keep-alive timer);
- a graceful stop that does not drop idle kept-alive connections (``shutdown``): uvicorn closes them at once, while
  a reverse proxy may be sending one a request in that very moment; nginx does not resend a POST it has sent, so
  the client got a 502 during a rolling restart.

The body deadline lives in the app (``middleware.BodyLimitMiddleware``), so that it is answered with a JSON 408.
This subclasses uvicorn internals (``HttpToolsProtocol`` callbacks), hence the exact uvicorn pin in pyproject.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from captioner.service.problems import MEDIA_TYPE, problem_body
from captioner.service.settings import Settings

log = logging.getLogger("captioner.service.server")


def _problem_bytes(status: int, reason: str, slug: str, detail: str) -> bytes:
    body = json.dumps(problem_body(status, slug, detail)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {MEDIA_TYPE}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline and size limit (see the module docstring).

    The limits are class attributes, set by ``protocol_class(settings)`` on a subclass of its own.
    """

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests or inside a request head (not in a body)
        self._head_bytes = 0  # raw bytes received while inside the current head (a head split over reads)
        self._head_size = 0  # request line + header bytes parsed so far (a head that came in one read)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered 408/431 and closing: ignore anything else on this connection
        self._draining = False  # the server is stopping: answer what comes, then close

    # asyncio.Protocol's parameter is a BaseTransport; uvicorn's own override narrows it (and ignores) the same way.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a full head is dropped at the deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._arm_head_timer()  # no-op when armed: the deadline counts from the head's first byte
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        if self._head_size > self.max_header_bytes:
            self._refuse_large_head()
            return
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head = True  # whatever follows is the next request's head

    def on_response_complete(self) -> None:
        # The app answered before reading the whole body (an error, or the body deadline): close rather than
        # keep alive, or a client could hold the connection by dripping the rest of the body.
        if self.cycle is not None and self.cycle.more_body and not self.pipeline:
            self.server_state.total_requests += 1
            self.transport.close()
            return
        super().on_response_complete()

    def shutdown(self) -> None:
        """The server is stopping (SIGTERM; it accepts no new connections). A busy connection closes after its
        response, as in uvicorn. An idle one is not closed at once: it closes when its client (a proxy) closes it
        or its keep-alive (or request-head) timer ends, and a request that arrives meanwhile is answered, with
        Connection: close. The stop waits at most that timer for it."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined request's head: never cut into the response being written
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was sent: no one to answer
            return
        self._refuse(
            408,
            "Request Timeout",
            "request-timeout",
            f"the request headers did not arrive within {self.header_timeout_s:g} s",
        )

    def _refuse_large_head(self) -> None:
        self._refuse(
            431,
            "Request Header Fields Too Large",
            "headers-too-large",
            f"the request line and headers are larger than {self.max_header_bytes:,} bytes",
        )

    def _refuse(self, status: int, reason: str, slug: str, detail: str) -> None:
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        log.info(
            "closing connection: %s", detail, extra={"fields": {"client": self.client, "status": status}}
        )
        self._cancel_head_timer()
        self.transport.write(_problem_bytes(status, reason, slug, detail))
        self.transport.close()


def protocol_class(settings: Settings) -> type[HardenedHttpToolsProtocol]:
    """A protocol class with the settings' head deadline and size limit (uvicorn instantiates it per connection)."""
    return type(
        "CaptionerHttpProtocol",
        (HardenedHttpToolsProtocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_header_bytes": settings.max_header_bytes},
    )


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The one server configuration: HOST:PORT, the connection limits, proxy trust, no server header, our logs."""
    trusted = settings.forwarded_allow_ips
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(settings),
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]  # annotated int; used as call_later's float
        limit_concurrency=settings.max_connections,
        # X-Forwarded-For/-Proto rewrite the client address only when the TCP peer is a configured proxy; with
        # none configured the middleware is off (uvicorn's own default would trust 127.0.0.1).
        proxy_headers=bool(trusted),
        forwarded_allow_ips=",".join(trusted) if trusted else None,
        log_config=None,
        access_log=False,  # our access log (middleware) replaces it
        log_level=settings.log_level,
        server_header=False,
    )


def serve(app: Any, settings: Settings) -> None:
    """Run ``app`` with ``server_config`` until SIGINT/SIGTERM (uvicorn drains in-flight requests first)."""
    uvicorn.Server(server_config(app, settings)).run()
