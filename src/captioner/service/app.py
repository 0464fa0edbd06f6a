"""The app factory and the uvicorn entry point.

    create_app(settings=None, captioner=None) -> FastAPI    # tests pass a captioner; production loads one
    main()                                                 # uvicorn on HOST:PORT (``captioner serve``)

The model is loaded once in ``lifespan`` (never at import) and warmed with one caption before /readyz says so.
Middleware, outermost first: request context (id, timing, access log, metrics) -> CORS -> body size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.middleware.cors import CORSMiddleware

from captioner import __version__
from captioner.decode.captioner import Captioner
from captioner.encoders.runtime import limit_blas_threads
from captioner.service.deps import body_limit_for
from captioner.service.metrics import Metrics
from captioner.service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from captioner.service.problems import install_handlers
from captioner.service.routes import captions, health, web
from captioner.service.settings import Settings
from captioner.service.state import ServiceState

log = logging.getLogger("captioner.service")


def create_app(settings: Settings | None = None, captioner: Captioner | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limit_blas_threads()  # service startup: one BLAS thread beside onnxruntime's (encoders/runtime.py)
        state = ServiceState(settings=settings, metrics=metrics, captioner=captioner)
        app.state.service = state
        task = None
        if settings.load_in_background:
            task = asyncio.create_task(asyncio.to_thread(_load_quietly, state))
        else:
            await asyncio.to_thread(state.load_and_warm)  # a bad model setting stops startup with its message
        yield
        state.ready = False
        metrics.ready.set(0)
        if task is not None and not task.done():
            task.cancel()
        state.close()

    app = FastAPI(
        title="captioner",
        version=__version__,
        summary="Image captioning: upload a photo, get a sentence.",
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(captions.router)
    app.include_router(health.router)
    app.include_router(web.router)
    app.mount("/web", StaticFiles(directory=web.WEB_DIR), name="web")

    app.add_middleware(
        BodyLimitMiddleware, limit_for=lambda path: body_limit_for(settings, path), metrics=metrics
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=[
                "X-Request-ID",
                "X-Cache",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
            ],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, instance_id=settings.instance_id)
    return app


def _load_quietly(state: ServiceState) -> None:
    # A failure is recorded in state.load_error and logged; /readyz and /health report it.
    with contextlib.suppress(Exception):
        state.load_and_warm()


def main(settings: Settings | None = None) -> None:
    """Serve on HOST:PORT with uvicorn, JSON logs on stderr."""
    import uvicorn

    from captioner.service.logs import configure_logging

    settings = settings or Settings()
    configure_logging(settings.log_level)
    log.info("starting captioner service on http://%s:%d", settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        log_level=settings.log_level,
        server_header=False,
    )


if __name__ == "__main__":
    main()
