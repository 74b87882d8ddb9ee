"""Open endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz():
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    """200 only while a model is loaded."""
    holder = request.app.state.holder
    loaded = holder.loaded
    if loaded is None:
        return JSONResponse({"ready": False, "detail": holder.last_error or "no model loaded"}, status_code=503)
    return {"ready": True, "model_version": loaded.version, "runtime": loaded.runtime.name}


@router.get("/metrics")
async def metrics(request: Request):
    """Prometheus text format."""
    state = request.app.state
    state.metrics.feedback_pending.set(await state.run_blocking(state.queue.pending_count))
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
