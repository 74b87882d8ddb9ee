"""Operator endpoints over the capture store: the latest detections and their frames (same auth as detect)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from alumi_edge.auth import require_token
from alumi_edge.errors import ApiError

router = APIRouter(tags=["capture"])

_ID = re.compile(r"^[0-9a-f]{32}$")
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".webp": "image/webp",
}


def _store(request: Request):
    store = getattr(request.app.state, "capture", None)
    if store is None:
        raise ApiError(
            501,
            "capture_off",
            "capture is off on this device (ALUMI_EDGE_CAPTURE=false, or its store could not be opened: see the "
            "server log): no frames are stored",
        )
    return store


def detection_summary(row: dict) -> dict:
    """A stored frame as the operator page lists it."""
    prediction = row["prediction"]
    image = prediction.get("image", {})
    return {
        "id": row["id"],
        "time": row["created_at"],
        "model_version": row["model_version"],
        "image": {
            "width": row["width"] if row["width"] is not None else image.get("width"),
            "height": row["height"] if row["height"] is not None else image.get("height"),
            "sha256": row["sha256"],
        },
        "boxes": prediction.get("boxes", []),
        "flagged": row["flagged"],
        "kept": row["kept"],
        "reasons": row["reasons"],
    }


@router.get("/v1/recent", dependencies=[Depends(require_token)])
async def recent(request: Request, limit: int = Query(20, ge=1, le=500, description="newest frames to list")):
    """The latest captured detections, newest first, with their boxes and whether they are kept."""
    store = _store(request)
    rows = await request.app.state.run_blocking(store.recent, limit)
    return {"detections": [detection_summary(row) for row in rows if row is not None]}


def _read_frame(store, frame_id: str) -> tuple[bytes, str] | None:
    path = store.frame_path(frame_id)
    if path is None:
        return None
    try:
        return path.read_bytes(), path.suffix
    except FileNotFoundError:  # evicted between the look-up and the read
        return None


@router.get("/v1/frames/{frame_id}", dependencies=[Depends(require_token)])
async def frame(request: Request, frame_id: str):
    """The frame's original bytes (what /v1/detect received), with its image content type."""
    store = _store(request)
    found = await request.app.state.run_blocking(_read_frame, store, frame_id) if _ID.match(frame_id) else None
    if found is None:
        raise ApiError(404, "not_found", f"no frame is stored under id {frame_id!r} (evicted, or never captured)")
    data, suffix = found
    return Response(
        data,
        media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
        headers={"Cache-Control": "private, max-age=86400, immutable", "X-Content-Type-Options": "nosniff"},
    )
