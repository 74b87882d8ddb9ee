"""The FastAPI app: ``create_app(settings)``; the model is loaded in the lifespan, inference runs in a thread pool.

Routers live in ``alumi_edge.routers``, one per concern; another API (e.g. the plant risk endpoint)
is added by writing a router and including it in :data:`ROUTERS` or via ``create_app(extra_routers=...)``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from alumi_edge import __version__
from alumi_edge.allocator import keep_large_buffers
from alumi_edge.auth import TokenVerifier
from alumi_edge.body_limit import BodyLimitMiddleware
from alumi_edge.capture import CaptureRules, CaptureStore
from alumi_edge.errors import install_error_handlers
from alumi_edge.feedback import FeedbackQueue
from alumi_edge.metrics import EdgeMetrics
from alumi_edge.routers import admin, detect, feedback, frames, health, model, operator, risk
from alumi_edge.serving import ModelHolder
from alumi_edge.settings import EdgeSettings

log = logging.getLogger(__name__)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    detect.router,
    model.router,
    feedback.router,
    admin.router,
    risk.router,
    frames.router,
    operator.router,
)


def open_capture(settings: EdgeSettings) -> CaptureStore:
    """The capture store of the device home, bounded and sampling as the settings say."""
    return CaptureStore(
        settings.capture_dir,
        max_bytes=settings.capture_max_bytes,
        recent_frames=settings.capture_recent_frames,
        rules=CaptureRules(
            uncertain_low=settings.capture_uncertain_low,
            uncertain_high=settings.capture_uncertain_high,
            rare_classes=settings.capture_rare_class_names,
            random_fraction=settings.capture_random_fraction,
            per_hour_cap=settings.capture_per_hour_cap,
        ),
    )


def create_app(settings: EdgeSettings | None = None, extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """Build the app; settings default to the ``ALUMI_EDGE_*`` environment. Auth misconfiguration fails here."""
    settings = settings or EdgeSettings()
    verifier = TokenVerifier(settings)  # raises ValueError naming the missing setting

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        if settings.keep_buffers and not keep_large_buffers():
            log.info("large freed buffers are returned to the system (no glibc mallopt here)")
        state.executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="alumi-infer")
        loop = asyncio.get_running_loop()

        async def run_blocking(fn, *args):
            """Run blocking work (SQLite fsync, model loading) off the event loop."""
            return await loop.run_in_executor(None, functools.partial(fn, *args))

        state.run_blocking = run_blocking
        state.queue = FeedbackQueue(settings.feedback_path, settings.device_id)
        state.capture = None
        if settings.capture:
            try:
                state.capture = await run_blocking(open_capture, settings)
                state.metrics.watch_capture(state.capture)
            except (OSError, sqlite3.Error) as exc:  # detection must go on without capture (a full or read-only disk)
                log.warning("capture is off: the store under %s could not be opened: %s", settings.capture_dir, exc)
        state.holder = ModelHolder(settings)
        await run_blocking(state.holder.try_initial_load)
        if state.holder.loaded is not None:
            state.metrics.set_model(state.holder.loaded.version, state.holder.loaded.runtime.name)
        try:
            yield
        finally:
            state.executor.shutdown(wait=True)
            if state.capture is not None:
                state.capture.close()  # writes the frames still queued
            state.queue.close()

    app = FastAPI(
        title="alumi-edge",
        version=__version__,
        description="Defect detection on the edge: detect, feedback, capture and operator page, health, metrics, "
        "model reload.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.verifier = verifier
    app.state.metrics = EdgeMetrics()
    install_error_handlers(app)
    for router in (*extra_routers, *ROUTERS):  # an extra router may replace a default route (first match wins)
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
