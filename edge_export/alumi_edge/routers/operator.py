"""GET /operator: the operator page (static HTML + JavaScript shipped in the package, no auth for the files).

The page asks for a token once (kept in the browser's localStorage) and sends it with every API call it makes
(/v1/model, /v1/recent, /v1/frames/{id}, /v1/feedback), so what it can see and do is what the token allows.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from alumi_edge.errors import ApiError

router = APIRouter(tags=["operator"])

STATIC = Path(__file__).resolve().parent.parent / "static"
_FILES = {
    "operator.js": "text/javascript; charset=utf-8",
    "operator.css": "text/css; charset=utf-8",
}
# The page only talks to its own origin: no inline script, no external resource, frames as blob: images.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.lru_cache(maxsize=8)
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@router.get("/operator", include_in_schema=False)
async def operator_page():
    """The operator page."""
    return Response(_read("operator.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/operator/{name}", include_in_schema=False)
async def operator_asset(name: str):
    """The page's script and style sheet."""
    if name not in _FILES:
        raise ApiError(404, "not_found", f"no operator file {name!r}")
    return Response(_read(name), media_type=_FILES[name], headers=_HEADERS)
