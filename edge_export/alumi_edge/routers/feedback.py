"""POST /v1/feedback: operator flags a false positive, a missed defect or a corrected box; queued durably first."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alumi_edge.auth import require_token
from alumi_edge.errors import ApiError

router = APIRouter(tags=["feedback"])


class BoxIn(BaseModel):
    """A box in original-image pixels."""

    model_config = ConfigDict(extra="forbid")
    x1: float = Field(ge=0)
    y1: float = Field(ge=0)
    x2: float = Field(ge=0)
    y2: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> BoxIn:
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise ValueError("box needs x2 > x1 and y2 > y1")
        return self


class FeedbackIn(BaseModel):
    """One operator correction."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["false_positive", "missed_defect", "corrected_box"]
    image_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="as returned by /v1/detect")
    image_ref: str | None = Field(None, min_length=1, max_length=1024, description="camera file name or URI")
    box: BoxIn
    original_box: BoxIn | None = Field(None, description="for corrected_box: the box the model returned")
    class_name: str = Field(min_length=1, max_length=128)
    author: str = Field(min_length=1, max_length=256)
    comment: str = Field("", max_length=4000)
    model_version: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _has_image(self) -> FeedbackIn:
        if not self.image_sha256 and not self.image_ref:
            raise ValueError("give image_sha256 or image_ref so the correction can be tied to its image")
        return self


@router.post("/v1/feedback", dependencies=[Depends(require_token)])
async def post_feedback(
    request: Request,
    feedback: FeedbackIn,
    idempotency_key: str | None = Header(None, max_length=200),
):
    """Store the correction in the local queue (fsynced) and return its id; same Idempotency-Key → same id."""
    state = request.app.state
    loaded = state.holder.loaded
    if loaded is not None and feedback.class_name not in loaded.runtime.info.names:
        raise ApiError(
            422,
            "invalid_request",
            [
                {
                    "field": "class_name",
                    "message": f"{feedback.class_name!r} is not one of {list(loaded.runtime.info.names)}",
                }
            ],
        )
    record = feedback.model_dump()
    if record["model_version"] is None and loaded is not None:
        record["model_version"] = loaded.version
    claims = getattr(request.state, "claims", {}) or {}
    record["token_subject"] = claims.get("sub")
    queued = await state.run_blocking(state.queue.add, record, idempotency_key)
    body = {"feedback_id": queued.feedback_id, "seq": queued.seq, "status": "queued", "duplicate": queued.duplicate}
    return JSONResponse(body, status_code=200 if queued.duplicate else 201)


@router.get("/v1/feedback/{feedback_id}", dependencies=[Depends(require_token)])
async def get_feedback(request: Request, feedback_id: str):
    """A queued record and whether it has been synced."""
    record = await request.app.state.run_blocking(request.app.state.queue.get, feedback_id)
    if record is None:
        raise ApiError(404, "not_found", f"no feedback with id {feedback_id!r}")
    return record
