"""POST /admin/reload: swap to the newest pulled model without dropping requests in flight."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from alumi_edge.auth import require_admin
from alumi_edge.errors import ApiError
from alumi_edge.serving import NoModel

router = APIRouter(tags=["admin"])


@router.post("/admin/reload", dependencies=[Depends(require_admin)])
async def reload_model(
    request: Request, force: bool = Query(False, description="reload even if the version is unchanged")
):
    """Load what ``current`` points to now and swap it in; on failure the running model stays."""
    state = request.app.state
    try:
        outcome = await state.run_blocking(state.holder.reload, force)
    except NoModel as exc:
        raise ApiError(409, "no_model", str(exc)) from exc
    except Exception as exc:
        raise ApiError(500, "reload_failed", f"{type(exc).__name__}: {exc}; still serving the previous model") from exc
    loaded = state.holder.loaded
    state.metrics.set_model(loaded.version, loaded.runtime.name)
    return outcome
