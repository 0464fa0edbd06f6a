"""Typed dependencies: the app state, readiness, API key, rate limit, decode options and the uploaded images."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Literal

from fastapi import Depends, Query, Request, Response, Security
from fastapi.security import APIKeyHeader
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from captioner.decode.answer import AnswerOptions
from captioner.decode.captioner import Captioner
from captioner.decode.options import DecodeOptions
from captioner.encoders.imagenet import MAX_TAGS_TOP_K
from captioner.service.problems import ServiceError
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


def get_captioner(state: StateDep) -> Captioner:
    """The loaded model; 503 with Retry-After while it is loading (or failed to load)."""
    if not state.ready or state.captioner is None:
        detail = "the model is still loading; retry in a few seconds"
        if state.load_error:
            detail = "the model failed to load; the operator must fix the server's model settings"
        raise ServiceError(503, "not-ready", detail, headers={"Retry-After": "5"})
    return state.captioner


CaptionerDep = Annotated[Captioner, Depends(get_captioner)]

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="required when the server has API keys"
)


def require_api_key(
    request: Request, state: StateDep, key: str | None = Security(api_key_header)
) -> str | None:
    """The caller's key if keys are configured and it is accepted; None if the server has no keys; else 401."""
    if not state.api_keys.enabled:
        return None
    if state.api_keys.check(key):
        return key
    state.metrics.auth_failures.inc()
    client = request.client.host if request.client else None
    log.warning(
        "refused request: %s API key",
        "missing" if not key else "invalid",
        extra={
            "fields": {
                "client": client,
                "path": request.url.path,
                "reason": "missing" if not key else "invalid",
            }
        },
    )
    raise ServiceError(
        401,
        "unauthorized",
        "a valid API key is required: send it in the X-API-Key header"
        if not key
        else "the API key is not valid",
        headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'},
    )


ApiKeyDep = Annotated[str | None, Depends(require_api_key)]


def rate_limit(request: Request, response: Response, state: StateDep, key: ApiKeyDep) -> None:
    """One token per request from the caller's bucket (the API key's if any, else the client IP's)."""
    if key:
        client = "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]
    else:
        client = "ip:" + (request.client.host if request.client else "unknown")
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
    beam_size: Annotated[int | None, Query(description="beams per image, 1..10")] = None,
    max_length: Annotated[int | None, Query(description="most words in a caption, 1..64")] = None,
    length_penalty: Annotated[
        float | None, Query(description="alpha in log_prob / length**alpha, 0..5")
    ] = None,
    n_best: Annotated[int | None, Query(description="captions to return, 1..beam_size")] = None,
) -> DecodeOptions:
    """Query parameters over the server's defaults; out-of-range values raise OptionsError (422)."""
    return settings.default_options(
        strategy=strategy,
        beam_size=beam_size,
        max_length=max_length,
        length_penalty=length_penalty,
        n_best=n_best,
    )


OptionsDep = Annotated[DecodeOptions, Depends(decode_options)]


def answer_options(
    settings: SettingsDep,
    tags_top_k: Annotated[
        int | None, Query(ge=0, le=MAX_TAGS_TOP_K, description="most ImageNet tags per image; 0: none")
    ] = None,
    tags_min_prob: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="leave out tags less probable than this")
    ] = None,
    gender_neutral: Annotated[
        bool | None, Query(description="rewrite man/woman/boy/girl... as person/child..., he/she as they")
    ] = None,
) -> AnswerOptions:
    """What the answer shows (tags, wording) over the server's defaults; they never change decoding."""
    return settings.answer_options(
        tags_top_k=tags_top_k, tags_min_prob=tags_min_prob, gender_neutral=gender_neutral
    )


AnswerDep = Annotated[AnswerOptions, Depends(answer_options)]


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
