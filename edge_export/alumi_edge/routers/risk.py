"""POST /v1/risk: a part's recent sensor window in, risk per defect type out (the release's risk_model file)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Union

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from alumi_edge.auth import require_token
from alumi_edge.device_home import HomeError
from alumi_edge.errors import ApiError
from alumi_edge.manifest import ReleaseError, verify_file
from alumi_edge.risk import RiskModelCache, RiskModelError, RiskUnavailable, WindowError

RISK_ROLE = "risk_model"
MAX_WINDOW_SAMPLES = 86_400  # one day at 1 Hz


class RiskRequest(BaseModel):
    part_id: str = Field(min_length=1, max_length=200, description="the part (coil) the window belongs to")
    alloy: str = Field(min_length=1, max_length=50, description="the part's alloy, e.g. 6063")
    signals: dict[str, list[Union[float, None]]] = Field(
        description="canonical signal name -> values in canonical units (null = missing), all equally long"
    )
    timestamps: list[Union[float, str]] | None = Field(
        default=None, description="per sample: epoch seconds or ISO 8601 with UTC offset; default 1 s apart"
    )


def _release_risk_file(holder) -> tuple[Path, str]:
    """(risk model file, release version) of the installed release, checked against its manifest."""
    version = holder.home.current_version()
    if version is None:
        raise ApiError(
            503, "risk_model_not_loaded", f"no release installed under {holder.home.root} (run 'alumi-edge pull')"
        )
    try:
        manifest = holder.home.manifest(version)
        entry = manifest.file_for_role(RISK_ROLE)
        if entry is None:
            raise ApiError(503, "risk_model_not_loaded", f"release {version} has no file with role {RISK_ROLE!r}")
        path = holder.home.version_dir(version) / entry.path
        verify_file(path, entry)
    except (HomeError, ReleaseError) as exc:
        raise ApiError(503, "risk_model_not_loaded", f"release {version}: {exc}") from exc
    return path, version


def create_risk_router(model_path: Path | None = None) -> APIRouter:
    """The /v1/risk router; scores with ``model_path`` when given, else with the current release's risk_model."""
    router = APIRouter(tags=["risk"])
    cache = RiskModelCache()

    def _score(path: Path, body: RiskRequest):
        model = cache.get(path)
        return model.version, model.score(body.alloy, body.signals, body.timestamps)

    @router.post("/v1/risk", dependencies=[Depends(require_token)])
    async def risk(request: Request, body: RiskRequest):
        """Risk per defect type for one part's recent samples."""
        state = request.app.state
        too_long = [name for name, values in body.signals.items() if len(values) > MAX_WINDOW_SAMPLES]
        if too_long:
            raise ApiError(
                413,
                "window_too_long",
                f"signals {', '.join(too_long)}: more than {MAX_WINDOW_SAMPLES} "
                "samples; send the part's recent window only",
            )
        if model_path is not None:
            path, release = model_path, None
        else:
            path, release = _release_risk_file(state.holder)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            model_version, risks = await loop.run_in_executor(state.executor, _score, path, body)
        except RiskUnavailable as exc:
            raise ApiError(501, "risk_unavailable", str(exc)) from exc
        except RiskModelError as exc:
            raise ApiError(503, "risk_model_not_loaded", str(exc)) from exc
        except FileNotFoundError as exc:
            raise ApiError(503, "risk_model_not_loaded", f"risk model file {path} is missing") from exc
        except WindowError as exc:
            raise ApiError(422, "invalid_window", str(exc)) from exc
        return {
            "part_id": body.part_id,
            "risk": risks,
            "model_version": model_version,
            "release": release,
            "samples": len(next(iter(body.signals.values()), [])),
            "timing_ms": round((time.perf_counter() - start) * 1000.0, 3),
        }

    return router


router = create_risk_router()
