"""GET /v1/model: what is being served."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from alumi_edge.auth import require_token
from alumi_edge.errors import ApiError

router = APIRouter(tags=["model"])


@router.get("/v1/model", dependencies=[Depends(require_token)])
async def model_info(request: Request):
    """Version, runtime, classes, input size and release facts of the served model."""
    holder = request.app.state.holder
    loaded = holder.loaded
    if loaded is None:
        raise ApiError(503, "model_not_loaded", holder.last_error or "no model is loaded yet")
    return {
        **loaded.describe(),
        "installed": {"current": holder.home.current_version(), "previous": holder.home.previous_version()},
    }
