"""POST /admin/model/reload and /admin/model/rollback: switch models without downtime (X-Admin-Key).

The reload loads the configured model path again (CAPTIONER_BUNDLE_PATH or MODEL_PATH...), warms it and swaps it
in while requests are in flight; a broken or tampered model is refused and the old one keeps serving. The
previous model stays loaded: rollback is immediate. SIGHUP does the same reload (service/app.py). The endpoints
are off (403) until admin key digests are configured; failed keys spend the client's auth-failure budget.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Security
from fastapi.security import APIKeyHeader

from captioner.errors import CaptionerError
from captioner.service.deps import StateDep, authenticate
from captioner.service.problems import ServiceError
from captioner.service.schemas import PROBLEM_RESPONSES, ModelVersions
from captioner.service.state import ServiceState, redact_paths

admin_key_header = APIKeyHeader(
    name="X-Admin-Key", scheme_name="AdminKey", auto_error=False, description="an admin key"
)


def require_admin_key(
    request: Request, state: StateDep, key: str | None = Security(admin_key_header)
) -> None:
    if not state.admin_keys.enabled:
        raise ServiceError(
            403,
            "admin-disabled",
            "the admin endpoints are off: set CAPTIONER_ADMIN_KEYS_SHA256 to enable them",
        )
    authenticate(request, state, state.admin_keys, key, "X-Admin-Key")


_ADMIN_PROBLEMS = {
    401: "missing or wrong X-Admin-Key",
    403: "the admin endpoints are off (no CAPTIONER_ADMIN_KEYS_SHA256)",
    409: "a switch is already running, or there is no previous model",
    422: "the new model was refused (broken or tampered); the old one keeps serving",
    429: "this address spent its budget of failed keys (see Retry-After)",
}
router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses={
        code: {**PROBLEM_RESPONSES[422], "description": text} for code, text in _ADMIN_PROBLEMS.items()
    },
)


def switch_model(state: ServiceState) -> ModelVersions:
    """Reload the configured model and swap it in (blocks until it is warmed); 422 if it is refused."""
    try:
        state.models.switch()
    except ServiceError:
        raise
    except (CaptionerError, OSError, ValueError) as exc:
        state.metrics.model_switches.labels("refused").inc()
        raise ServiceError(
            422,
            "model-refused",
            f"the new model was refused and the current one keeps serving: {redact_paths(str(exc))}",
        ) from None
    state.metrics.model_switches.labels("switched").inc()
    return ModelVersions(**state.models.versions())


@router.post("/model/reload", summary="Load the configured model again and switch to it")
def reload_model(state: StateDep, _: None = Security(require_admin_key)) -> ModelVersions:
    """Loads and warms the model at the configured path aside, then swaps it in atomically: requests in flight
    finish on the old model, none fails. The old model becomes `previous` (see rollback)."""
    return switch_model(state)


@router.post("/model/rollback", summary="Switch back to the previous model")
def rollback_model(state: StateDep, _: None = Security(require_admin_key)) -> ModelVersions:
    state.models.rollback()
    state.metrics.model_switches.labels("rolled_back").inc()
    return ModelVersions(**state.models.versions())
