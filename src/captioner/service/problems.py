"""Every error the service returns is an RFC 7807 problem: JSON {type, title, status, detail, request_id}.

``ServiceError`` is raised by the service's own code; ``install_handlers`` maps it, the package's
``CaptionerError``s, FastAPI's validation errors and Starlette's HTTP exceptions to the same shape, so a client
parses one format and never sees a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from captioner.errors import (
    CaptionerError,
    ImageError,
    ImageTooComplex,
    ImageTooLarge,
    OptionsError,
    UnsupportedImageType,
)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:captioner:problem:"
log = logging.getLogger("captioner.service")


class ServiceError(Exception):
    """An error with its HTTP status, a stable slug for ``type``, a human detail and optional headers."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        title: str | None = None,
    ):
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail
        self.headers: dict[str, str] = dict(headers or {})
        self.title = title or HTTPStatus(status).phrase


def problem_body(
    status: int, slug: str, detail: str, title: str | None = None, request_id: str | None = None
):
    body = {
        "type": TYPE_PREFIX + slug,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if request_id:
        body["request_id"] = request_id
    return body


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def problem_response(request: Request, error: ServiceError, **extra) -> JSONResponse:
    body = problem_body(error.status, error.slug, error.detail, error.title, _request_id(request))
    body.update(extra)
    return JSONResponse(body, status_code=error.status, headers=error.headers, media_type=MEDIA_TYPE)


def from_captioner_error(exc: CaptionerError) -> ServiceError:
    """The package's user errors -> HTTP. Order matters: subclasses first."""
    if isinstance(exc, UnsupportedImageType):
        return ServiceError(415, "unsupported-image-type", str(exc))
    if isinstance(exc, ImageTooLarge):
        return ServiceError(413, "image-too-large", str(exc))
    if isinstance(exc, ImageTooComplex):
        return ServiceError(422, "image-too-complex", str(exc))
    if isinstance(exc, ImageError):
        return ServiceError(422, "invalid-image", str(exc))
    if isinstance(exc, OptionsError):
        return ServiceError(422, "invalid-options", str(exc))
    # BundleError, EncoderError, DataError at request time are the server's fault, not the client's.
    log.error("captioner error while serving: %s", exc)
    return ServiceError(500, "internal-error", "the server could not caption the image; see the server log")


_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    503: "unavailable",
}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError):
        return problem_response(request, exc)

    @app.exception_handler(CaptionerError)
    async def _captioner(request: Request, exc: CaptionerError):
        return problem_response(request, from_captioner_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            errors.append({"loc": where, "msg": err.get("msg", "")})
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "the request is invalid"
        error = ServiceError(422, "validation-error", detail + " (see the OpenAPI schema at /docs)")
        return problem_response(request, error, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs for the API"
        error = ServiceError(exc.status_code, _SLUGS.get(exc.status_code, "http-error"), detail, exc.headers)
        return problem_response(request, error)
