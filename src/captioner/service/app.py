"""The app factory and the uvicorn entry point.

    create_app(settings=None, captioner=None) -> FastAPI    # tests pass a captioner; production loads one
    main()                                                 # serve on HOST:PORT (``captioner serve``)

The model is loaded once in ``lifespan`` (never at import) and warmed with one caption before /readyz says so.
Middleware, outermost first: request context (id, timing, access log, metrics) -> CORS -> body size and time
limits. /docs and /redoc load Swagger UI and ReDoc from files shipped in fastapi-offline (no CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from captioner import __version__
from captioner.decode.captioner import Captioner
from captioner.encoders.runtime import limit_blas_threads, share_cpu_arena
from captioner.service.metrics import Metrics
from captioner.service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from captioner.service.problems import install_handlers
from captioner.service.routes import admin, captions, health, web
from captioner.service.settings import Settings
from captioner.service.state import ServiceState
from captioner.service.uploads import body_limit_for

log = logging.getLogger("captioner.service")


def create_app(settings: Settings | None = None, captioner: Captioner | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limit_blas_threads()  # service startup: one BLAS thread beside onnxruntime's (encoders/runtime.py)
        share_cpu_arena()  # and one onnxruntime arena for all its sessions
        state = ServiceState(settings=settings, metrics=metrics, injected=captioner)
        app.state.service = state
        task = None
        if settings.load_in_background:
            task = asyncio.create_task(asyncio.to_thread(_load_quietly, state))
        else:
            await asyncio.to_thread(state.load_and_warm)  # a bad model setting stops startup with its message
        _reload_on_sighup(state)
        yield
        state.ready = False
        metrics.ready.set(0)
        if task is not None and not task.done():
            task.cancel()
        state.close()

    app = FastAPIOffline(
        title="captioner",
        version=__version__,
        summary="Image captioning: upload a photo, get a sentence.",
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(captions.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(web.router)
    app.mount("/web", StaticFiles(directory=web.WEB_DIR), name="web")
    app.openapi = lambda: _as_configured(FastAPI.openapi(app), settings)  # type: ignore[method-assign]  # FastAPI's documented override

    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=lambda path: body_limit_for(settings, path),
        metrics=metrics,
        timeout_s=settings.body_timeout_s,
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


def _reload_on_sighup(state: ServiceState) -> None:
    """SIGHUP reloads the configured model path and swaps it in (like POST /admin/model/reload); a refused
    model is logged and the current one keeps serving. Only where the event loop runs in the main thread."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            admin.switch_model(state)
        except Exception as exc:  # noqa: BLE001 - logged; the current model keeps serving
            log.error("SIGHUP model reload refused: %s", getattr(exc, "detail", exc))

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, reload))


def _as_configured(schema: dict, settings: Settings) -> dict:
    """The OpenAPI schema with what these settings enforce: a key requirement (X-API-Key, X-Admin-Key) only when
    the server has such keys, and the batch route's most files. Edits FastAPI's cached schema in place."""
    configured = {"ApiKey": settings.auth_enabled, "AdminKey": bool(settings.admin_keys_sha256)}
    schemes = schema.get("components", {}).get("securitySchemes", {})
    for name, on in configured.items():
        if not on:
            schemes.pop(name, None)
    if not schemes:
        schema.get("components", {}).pop("securitySchemes", None)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            kept = [req for req in operation.get("security", []) if all(configured.get(k, True) for k in req)]
            if kept:
                operation["security"] = kept
            else:
                operation.pop("security", None)
    batch = schema["paths"]["/generate-captions/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    batch["schema"]["properties"]["files"]["maxItems"] = settings.max_batch_images
    return schema


def _load_quietly(state: ServiceState) -> None:
    # A failure is recorded in state.load_error and logged; /readyz and /health report it.
    with contextlib.suppress(Exception):
        state.load_and_warm()


def main(settings: Settings | None = None) -> None:
    """Serve on HOST:PORT with the hardened server config (service/server.py), JSON logs on stderr."""
    from captioner.service.logs import configure_logging
    from captioner.service.server import serve

    settings = settings or Settings()
    configure_logging(settings.log_level)
    log.info("starting captioner service on http://%s:%d", settings.host, settings.port)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
