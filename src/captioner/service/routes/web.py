"""GET /: a small page to try the service from a browser or phone (static files, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

# The page loads only its own script and style; previews are blob: URLs.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(
        WEB_DIR / "index.html", headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
    )
