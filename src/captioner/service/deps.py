"""Typed dependencies: the app state, readiness, API key, rate limit, decode options and the uploaded images."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import Depends, Query, Request, Response, Security
from fastapi.security import APIKeyHeader
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from captioner.decode.options import MAX_BEAM_SIZE, MAX_LENGTH_LIMIT, MAX_LENGTH_PENALTY, DecodeOptions
from captioner.service.models import ServedModel
from captioner.service.problems import ServiceError
from captioner.service.security import ApiKeys, caller_id
from captioner.service.settings import Settings
from captioner.service.state import ServiceState

log = logging.getLogger("captioner.service.security")

# Multipart headers and boundaries around the files: allowed on top of the per-file byte limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_served(state: StateDep) -> ServedModel:
    """The active model, read once for the whole request (a model switch never changes it under a request);
    503 with Retry-After while it is loading (or failed to load)."""
    served = state.served
    if not state.ready or served is None:
        detail = "the model is still loading; retry in a few seconds"
        if state.load_error:
            detail = "the model failed to load; the operator must fix the server's model settings"
        raise ServiceError(503, "not-ready", detail, headers={"Retry-After": "5"})
    return served


ServedDep = Annotated[ServedModel, Depends(get_served)]

api_key_header = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    auto_error=False,
    description="required when the server has API keys",
)


def authenticate(request: Request, state: ServiceState, keys: ApiKeys, key: str | None, header: str) -> str:
    """``key`` if ``keys`` accepts it, else 401. A client IP that spent its budget of failed attempts (API and
    admin keys alike) gets 429 before its key is even checked."""
    client = request.client.host if request.client else "unknown"
    refused = state.auth_throttle.refused(client)
    if refused is not None:
        state.metrics.auth_throttled.inc()
        if state.auth_throttle.should_log(client):
            log.warning(
                "throttling key attempts from %s: too many failed keys",
                client,
                extra={"fields": {"client": client, "path": request.url.path, "reason": "auth_throttled"}},
            )
        raise ServiceError(
            429,
            "too-many-auth-failures",
            f"too many requests with a missing or invalid key from your address: retry after "
            f"{refused.retry_after_s} s with a valid key in the {header} header",
            headers={"Retry-After": str(refused.retry_after_s)},
        )
    if key and keys.check(key):
        return key
    state.auth_throttle.failed(client)
    state.metrics.auth_failures.inc()
    reason = "missing" if not key else "invalid"
    log.warning(
        "refused request: %s %s", reason, header,
        extra={"fields": {"client": client, "path": request.url.path, "reason": reason}},
    )  # fmt: skip
    raise ServiceError(
        401,
        "unauthorized",
        f"a valid key is required: send it in the {header} header"
        if not key
        else f"the {header} is not valid",
        headers={"WWW-Authenticate": f'ApiKey header="{header}"'},
    )


def require_api_key(
    request: Request, state: StateDep, key: str | None = Security(api_key_header)
) -> str | None:
    """The caller's key if keys are configured and it is accepted; None if the server has no keys; else 401
    (or 429 once the client's budget of failed keys is spent)."""
    if not state.api_keys.enabled:
        return None
    return authenticate(request, state, state.api_keys, key, "X-API-Key")


ApiKeyDep = Annotated[str | None, Depends(require_api_key)]


def caller(key: ApiKeyDep) -> str:
    """The accepted caller's identity (a digest of its key; "" without keys): namespaces per-caller state."""
    return caller_id(key)


CallerDep = Annotated[str, Depends(caller)]


def rate_limit(request: Request, response: Response, state: StateDep, who: CallerDep) -> None:
    """One token per request from the caller's bucket (the API key's if any, else the client IP's)."""
    client = who or "ip:" + (request.client.host if request.client else "unknown")
    decision = state.limiter.hit(client)
    if decision is None:
        return
    if not decision.allowed:
        state.metrics.rate_limited.inc()
        raise ServiceError(
            429,
            "rate-limited",
            f"too many requests: the limit is {state.settings.rate_limit_per_minute} per minute (bursts of "
            f"{decision.limit}); retry after {decision.retry_after_s} s",
            headers=decision.headers(),
        )
    response.headers.update(decision.headers())


def decode_options(
    settings: SettingsDep,
    strategy: Annotated[Literal["greedy", "beam"] | None, Query(description="greedy or beam search")] = None,
    beam_size: Annotated[
        int | None, Query(ge=1, le=MAX_BEAM_SIZE, description="beams per image (beam search)")
    ] = None,
    max_length: Annotated[
        int | None, Query(ge=1, le=MAX_LENGTH_LIMIT, description="most words in a caption")
    ] = None,
    length_penalty: Annotated[
        float | None,
        Query(ge=0.0, le=MAX_LENGTH_PENALTY, description="alpha in score = log_prob / length**alpha"),
    ] = None,
    n_best: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_BEAM_SIZE,
            description="captions to return per image; at most the beam size (1 for greedy): a larger value "
            "is refused with 422, a rule across two parameters that the schema cannot state",
        ),
    ] = None,
) -> DecodeOptions:
    """Query parameters over the server's defaults. The bounds are DecodeOptions' own (the schema states them,
    FastAPI answers 422 out of them); DecodeOptions checks n_best against the beam size (OptionsError, 422)."""
    return settings.default_options(
        strategy=strategy,
        beam_size=beam_size,
        max_length=max_length,
        length_penalty=length_penalty,
        n_best=n_best,
    )


OptionsDep = Annotated[DecodeOptions, Depends(decode_options)]


async def _bounded_stream(request: Request, limit: int, state: ServiceState):
    """The request body, refused with 413 past ``limit`` bytes (the middleware does the same; belt and braces)."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            state.metrics.rejected_upload("body_too_large")
            raise ServiceError(413, "body-too-large", f"the request body is larger than {limit:,} bytes")
        yield chunk


async def read_files(
    request: Request, state: ServiceState, field_names: tuple[str, ...], max_files: int
) -> list[bytes]:
    """Parse a multipart body entirely in memory (never a temp file) and return the files' bytes in order.

    The client's filename and content type are ignored: the image type is sniffed from the bytes later.
    """
    settings = state.settings
    hint = "send the image as multipart/form-data in a field named 'file', e.g. curl -F file=@photo.jpg"
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        state.metrics.rejected_upload("not_multipart")
        raise ServiceError(422, "missing-file", f"no file was uploaded: {hint}")
    body_limit = body_limit_for(settings, request.url.path)
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
        raise ServiceError(422, "bad-multipart", f"the multipart body is malformed ({exc}): {hint}") from None
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
                    f"field '{name}' holds text, not a file upload: {hint} (note the @ in curl's -F)",
                )
    finally:
        await form.close()
    if not files:
        state.metrics.rejected_upload("missing_file")
        got = f" (got a file in field {other[0]!r})" if other else ""
        raise ServiceError(
            422, "missing-file", f"no file was uploaded in field '{field_names[0]}'{got}: {hint}"
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


def body_limit_for(settings: Settings, path: str) -> int:
    """Bytes a request body may have on ``path``: the files plus multipart overhead."""
    files = settings.max_batch_images if path.rstrip("/").endswith("generate-captions") else 1
    return settings.max_upload_bytes * files + MULTIPART_OVERHEAD_BYTES
