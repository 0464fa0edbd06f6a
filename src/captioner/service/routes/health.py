"""Probes and metrics: GET /livez (process up), /readyz (model loaded and warmed), /health (details), /metrics."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Response

from captioner.service.deps import StateDep
from captioner.service.metrics import CONTENT_TYPE
from captioner.service.problems import ServiceError
from captioner.service.schemas import Health, Problem
from captioner.service.state import ServiceState

router = APIRouter(tags=["health"])


@router.get("/livez", summary="Liveness: the process answers")
def livez() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the model is loaded and warmed",
    responses={503: {"model": Problem, "description": "still loading (or failed to load)"}},
)
def readyz(state: StateDep) -> dict:
    if not state.ready:
        detail = (
            "the model is loading"
            if not state.load_error
            else f"the model failed to load: {state.public_load_error}"
        )
        raise ServiceError(503, "not-ready", detail, headers={"Retry-After": "5"})
    return {"status": "ready"}


@router.get("/health", response_model=Health, summary="Status, model, evaluation metrics and process stats")
def health(state: StateDep) -> Health:
    """Public: it shows no filesystem path and no secret (the server's log has the details)."""
    s = state.settings
    status: Literal["ok", "loading", "error"] = (
        "ok" if state.ready else ("error" if state.load_error else "loading")
    )
    return Health(
        status=status,
        liveness=True,
        readiness=state.ready,
        model=state.model_info(),
        uptime_s=round(time.time() - state.started, 3),
        process=state.process.snapshot(),
        inference={
            "inflight": state.pool.inflight,
            "max_queue": s.max_queue,
            "workers": s.inference_workers,
            "micro_batching": _micro_batching(state),
        },
        cache={
            "backend": state.cache.backend,
            # true while Redis is configured but unreachable: results are kept in this instance's memory
            "degraded": bool(getattr(getattr(state.cache, "guard", None), "down", False)),
            "entries": state.cache.size(),
            "max_entries": s.cache_max_entries,
        },
        rate_limit={
            "backend": state.limiter.backend,
            "degraded": bool(getattr(getattr(state.limiter, "guard", None), "down", False)),
            "per_minute": s.rate_limit_per_minute,
            "burst": s.burst,
        },
        load_error=state.public_load_error,
    )


def _micro_batching(state: ServiceState) -> dict | None:
    """The active model's micro-batcher since it started (decode/microbatch.py); None when it has none."""
    batcher = state.batcher
    if batcher is None:
        return None
    stats = batcher.stats
    return {**asdict(stats), "mean_batch_size": round(stats.mean_batch_size, 3)}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
