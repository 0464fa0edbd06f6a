"""Typed dependencies: the app state, readiness, API key, rate limit and decode options (uploads: uploads.py)."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Literal

from fastapi import Depends, Query, Request, Response, Security
from fastapi.security import APIKeyHeader

from captioner.decode.captioner import Captioner
from captioner.decode.options import DecodeOptions
from captioner.service.problems import ServiceError
from captioner.service.settings import Settings
from captioner.service.state import ServiceState

log = logging.getLogger("captioner.service.security")


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
