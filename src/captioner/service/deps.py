"""Dependencies: the app state (probes, admin) and, for the caption routes, the caller (API key, rate limit) and
the request's options over the server's defaults for the active model (``caption_call``; uploads: uploads.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Annotated, Literal

from fastapi import Depends, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from captioner.decode.answer import AnswerOptions
from captioner.decode.options import (
    MAX_BEAM_SIZE,
    MAX_LENGTH_LIMIT,
    MAX_LENGTH_PENALTY,
    MAX_SCORE_DROP,
    DecodeOptions,
)
from captioner.encoders.imagenet import MAX_TAGS_TOP_K
from captioner.service.models import ServedModel
from captioner.service.problems import ServiceError
from captioner.service.security import ApiKeys, caller_id
from captioner.service.state import ServiceState

log = logging.getLogger("captioner.service.security")


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def served_model(state: ServiceState) -> ServedModel:
    """The active model, read once for the whole request (a model switch never changes it under a request);
    503 with Retry-After while it is loading (or failed to load)."""
    served = state.served
    if not state.ready or served is None:
        detail = "the model is still loading; retry in a few seconds"
        if state.load_error:
            detail = "the model failed to load; the operator must fix the server's model settings"
        raise ServiceError(503, "not-ready", detail, headers={"Retry-After": "5"})
    return served


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


async def admitted_caller(
    request: Request, response: Response, key: str | None = Security(api_key_header)
) -> str:
    """The caption routes' first dependency: the API key, then the rate limit, before any byte of the upload is
    read. Returns the caller's identity (a digest of its key; "" without keys), which namespaces per-caller state.

    The key: 401 when keys are configured and it is missing or wrong (429 once the client's budget of failed keys
    is spent). The rate limit: one token per request from the caller's bucket (the API key's if any, else the
    client IP's); 429 when it is empty, else the X-RateLimit headers. Both may ask Redis: in the threadpool, never
    on the event loop. The dependencies of the caption routes are few, flat coroutines: FastAPI solves each
    dependency's own dependencies again for every use, and runs a plain function in its threadpool (a thread hop).
    """
    state: ServiceState = request.app.state.service
    if state.api_keys.enabled:
        key = await run_in_threadpool(authenticate, request, state, state.api_keys, key, "X-API-Key")
    else:
        key = None
    who = caller_id(key)
    client = who or "ip:" + (request.client.host if request.client else "unknown")
    limiter = state.limiter
    if limiter.backend == "redis":
        decision = await run_in_threadpool(limiter.hit, client)
    else:
        decision = limiter.hit(client)
    if decision is not None:
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
    return who


CallerDep = Annotated[str, Depends(admitted_caller)]


class CaptionQuery(BaseModel):
    """The query parameters of the caption routes; None keeps the server's default. The decode options' bounds
    are DecodeOptions' own; DecodeOptions checks n_best against the beam size (OptionsError, 422).

    ``caption_query`` validates a request's query string in one call, and ``query_parameters()`` documents the
    fields in the OpenAPI schema, as FastAPI would for ``Annotated[CaptionQuery, Query()]``. FastAPI's own way
    extracts each field from the query string in Python before validating (~0.2 ms per request for these 12 on
    this machine class, a sixth of the event loop's work for a request); this is one pydantic call.
    """

    # how to decode
    strategy: Literal["greedy", "beam"] | None = Field(None, description="greedy or beam search")
    beam_size: int | None = Field(None, ge=1, le=MAX_BEAM_SIZE, description="beams per image (beam search)")
    max_length: int | None = Field(None, ge=1, le=MAX_LENGTH_LIMIT, description="most words in a caption")
    length_penalty: float | None = Field(
        None, ge=0.0, le=MAX_LENGTH_PENALTY, description="alpha in score = log_prob / length**alpha"
    )
    n_best: int | None = Field(
        None,
        ge=1,
        le=MAX_BEAM_SIZE,
        description="captions to return per image; at most the beam size (1 for greedy): a larger value "
        "is refused with 422, a rule across two parameters that the schema cannot state",
    )
    label_constraint: bool | None = Field(
        None,
        description="name the object the encoder sees (its ImageNet class) with a word of the model's label map",
    )
    label_constraint_min_prob: float | None = Field(
        None, gt=0.0, le=1.0, description="least word mass (class probability) that triggers label_constraint"
    )
    label_constraint_max_score_drop: float | None = Field(
        None,
        ge=0.0,
        le=MAX_SCORE_DROP,
        description="a caption made to name the object is kept only if it scores at most this below the plain one",
    )
    label_constraint_always_prob: float | None = Field(
        None, gt=0.0, le=1.0, description="from this word mass the named caption is kept whatever its score"
    )
    # what the answer shows (tags, wording); never changes decoding
    tags_top_k: int | None = Field(
        None, ge=0, le=MAX_TAGS_TOP_K, description="most ImageNet tags per image; 0: none"
    )
    tags_min_prob: float | None = Field(
        None, ge=0.0, le=1.0, description="leave out tags less probable than this"
    )
    gender_neutral: bool | None = Field(
        None, description="rewrite man/woman/boy/girl... as person/child..., he/she as they"
    )


@dataclass(frozen=True)
class CaptionCall:
    """What a caption request asks for, checked: the service, its active model, the decode and answer options."""

    state: ServiceState
    model: ServedModel
    options: DecodeOptions
    answer: AnswerOptions


_ANSWER_QUERY = frozenset(f.name for f in fields(AnswerOptions))  # the rest of CaptionQuery: DecodeOptions


def caption_query(request: Request) -> CaptionQuery:
    """The query string as a CaptionQuery (the last value of a repeated name, unknown names ignored, as FastAPI
    does); RequestValidationError (422) with FastAPI's error locations ("query", name) when it is not valid."""
    try:
        return CaptionQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def query_parameters() -> list[dict]:
    """CaptionQuery's fields as OpenAPI query parameters (for a route's ``openapi_extra``)."""
    properties = CaptionQuery.model_json_schema()["properties"]
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": prop["description"],
            "schema": {k: v for k, v in prop.items() if k != "default"},
        }
        for name, prop in properties.items()
    ]


def caption_call(request: Request) -> CaptionCall:
    """The query over the server's defaults, for the active model: 422 for an invalid query or options that do
    not go together (OptionsError), 503 while the model loads."""
    state: ServiceState = request.app.state.service
    settings, decode = state.settings, dict(caption_query(request))
    answer = {k: decode.pop(k) for k in _ANSWER_QUERY & decode.keys()}
    return CaptionCall(
        state=state,
        model=served_model(state),
        options=settings.default_options(**decode),
        answer=settings.answer_options(**answer),
    )
