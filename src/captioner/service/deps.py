"""Typed dependencies: the app state, readiness, API key, rate limit and decode options (uploads: uploads.py)."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import Depends, Query, Request, Response, Security
from fastapi.security import APIKeyHeader
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
from captioner.service.settings import Settings
from captioner.service.state import ServiceState

log = logging.getLogger("captioner.service.security")


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_served(state: StateDep) -> ServedModel:
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


async def require_api_key(
    request: Request, state: StateDep, key: str | None = Security(api_key_header)
) -> str | None:
    """The caller's key if keys are configured and it is accepted; None if the server has no keys; else 401
    (or 429 once the client's budget of failed keys is spent). The check may ask Redis (the failure throttle):
    in the threadpool, never on the event loop."""
    if not state.api_keys.enabled:
        return None
    return await run_in_threadpool(authenticate, request, state, state.api_keys, key, "X-API-Key")


ApiKeyDep = Annotated[str | None, Depends(require_api_key)]


async def caller(key: ApiKeyDep) -> str:
    """The accepted caller's identity (a digest of its key; "" without keys): namespaces per-caller state."""
    return caller_id(key)


CallerDep = Annotated[str, Depends(caller)]


async def rate_limit(request: Request, response: Response, state: StateDep, who: CallerDep) -> None:
    """One token per request from the caller's bucket (the API key's if any, else the client IP's). The
    dependencies that only read memory are coroutines: FastAPI would run a plain function in its threadpool, a
    thread hop each (~0.1 ms per request for all of them on 2 cores); Redis is asked from the threadpool."""
    client = who or "ip:" + (request.client.host if request.client else "unknown")
    limiter = state.limiter
    if limiter.backend == "redis":
        decision = await run_in_threadpool(limiter.hit, client)
    else:
        decision = limiter.hit(client)
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


async def decode_options(
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
    label_constraint: Annotated[
        bool | None,
        Query(
            description="name the object the encoder sees (its ImageNet class) with a word of the model's label map"
        ),
    ] = None,
    label_constraint_min_prob: Annotated[
        float | None,
        Query(
            gt=0.0, le=1.0, description="least word mass (class probability) that triggers label_constraint"
        ),
    ] = None,
    label_constraint_max_score_drop: Annotated[
        float | None,
        Query(
            ge=0.0,
            le=MAX_SCORE_DROP,
            description="a caption made to name the object is kept only if it scores at most this below the plain one",
        ),
    ] = None,
    label_constraint_always_prob: Annotated[
        float | None,
        Query(gt=0.0, le=1.0, description="from this word mass the named caption is kept whatever its score"),
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
        label_constraint=label_constraint,
        label_constraint_min_prob=label_constraint_min_prob,
        label_constraint_max_score_drop=label_constraint_max_score_drop,
        label_constraint_always_prob=label_constraint_always_prob,
    )


OptionsDep = Annotated[DecodeOptions, Depends(decode_options)]


async def answer_options(
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
