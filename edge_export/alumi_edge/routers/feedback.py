"""POST /v1/feedback: operator flags a false positive, a missed defect or a corrected box; queued durably first.

The image a correction belongs to is named in one of three ways: ``image_sha256`` (as /v1/detect returned it),
``image_ref`` (a camera file name or URI), or ``detection_id`` (the ``id`` /v1/detect returned): then the frame
kept in the capture store is flagged, so it is synced to the lake with the correction, and the record's
``image_sha256`` is the stored frame's. ``POST /v1/feedback/upload`` takes the frame itself with the record
(multipart: ``file`` + ``feedback`` JSON) and keeps it the same way.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import UploadFile

from alumi_edge.auth import require_token
from alumi_edge.errors import ApiError
from alumi_edge.imaging import CorruptImage, ImageTooLarge, UnsupportedImageType, decode_image

router = APIRouter(tags=["feedback"])

OUTSIDE_TOLERANCE_PX = 0.5  # a box may reach this far past the image border (rounding of drawn boxes)


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


class FeedbackFields(BaseModel):
    """One operator correction (the image it belongs to may still be missing: see FeedbackIn)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["false_positive", "missed_defect", "corrected_box"]
    image_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="as returned by /v1/detect")
    image_ref: str | None = Field(None, min_length=1, max_length=1024, description="camera file name or URI")
    detection_id: str | None = Field(
        None, pattern=r"^[0-9a-f]{32}$", description="the 'id' /v1/detect returned; its captured frame is kept"
    )
    box: BoxIn
    original_box: BoxIn | None = Field(None, description="for corrected_box: the box the model returned")
    class_name: str = Field(min_length=1, max_length=128)
    author: str = Field(min_length=1, max_length=256)
    comment: str = Field("", max_length=4000)
    model_version: str | None = Field(None, max_length=128)


class FeedbackIn(FeedbackFields):
    """One operator correction, tied to its image by detection_id, image_sha256 or image_ref."""

    @model_validator(mode="after")
    def _has_image(self) -> FeedbackIn:
        if not self.image_sha256 and not self.image_ref and not self.detection_id:
            raise ValueError("give detection_id, image_sha256 or image_ref so the correction can be tied to its image")
        return self


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", [{"field": field, "message": message}])


def _check_class(loaded, class_name: str, field: str = "class_name") -> None:
    if loaded is not None and class_name not in loaded.runtime.info.names:
        raise _invalid(field, f"{class_name!r} is not one of {list(loaded.runtime.info.names)}")


def _check_inside(feedback: FeedbackFields, width: int | None, height: int | None, prefix: str = "") -> None:
    """422 when a box reaches outside the image the correction belongs to (when its size is known)."""
    if not width or not height:
        return
    for name in ("box", "original_box"):
        box = getattr(feedback, name)
        if box is not None and (box.x2 > width + OUTSIDE_TOLERANCE_PX or box.y2 > height + OUTSIDE_TOLERANCE_PX):
            raise _invalid(f"{prefix}{name}", f"box {box.model_dump()} reaches outside the {width}x{height} image")


async def _queue(request: Request, record: dict, idempotency_key: str | None, **extra) -> JSONResponse:
    """Queue the record durably (fsynced) and answer 201, or 200 for a repeated Idempotency-Key."""
    state = request.app.state
    loaded = state.holder.loaded
    if record["model_version"] is None and loaded is not None:
        record["model_version"] = loaded.version
    claims = getattr(request.state, "claims", {}) or {}
    record["token_subject"] = claims.get("sub")
    queued = await state.run_blocking(state.queue.add, record, idempotency_key)
    body = {
        "feedback_id": queued.feedback_id,
        "seq": queued.seq,
        "status": "queued",
        "duplicate": queued.duplicate,
        **extra,
    }
    return JSONResponse(body, status_code=200 if queued.duplicate else 201)


def _stored_frame(store, detection_id: str) -> dict | None:
    store.flush()  # a frame submitted a moment ago may still be on its way to the disk
    return store.get(detection_id)


@router.post("/v1/feedback", dependencies=[Depends(require_token)])
async def post_feedback(
    request: Request,
    feedback: FeedbackIn,
    idempotency_key: str | None = Header(None, max_length=200),
):
    """Store the correction in the local queue (fsynced) and return its id; same Idempotency-Key → same id.

    With ``detection_id`` the captured frame is flagged (kept until synced) and the record's ``image_sha256``
    is the frame's; 422 naming ``detection_id`` when the frame is not stored (evicted, dropped, capture off).
    """
    state = request.app.state
    _check_class(state.holder.loaded, feedback.class_name)
    record = feedback.model_dump()
    extra = {}
    if feedback.detection_id is not None:
        store = getattr(state, "capture", None)
        if store is None:
            raise _invalid(
                "detection_id",
                "capture is off on this device (ALUMI_EDGE_CAPTURE=false, or its store could not be opened: see the "
                "server log), so no frame is stored under a detection_id: send image_sha256, or upload the frame "
                "to /v1/feedback/upload",
            )
        row = await state.run_blocking(_stored_frame, store, feedback.detection_id)
        if row is not None:
            if feedback.image_sha256 and feedback.image_sha256 != row["sha256"]:
                raise _invalid("image_sha256", f"does not match the frame of detection_id ({row['sha256']})")
            _check_inside(feedback, row["width"], row["height"])
            row = await state.run_blocking(store.flag, feedback.detection_id)  # None when evicted meanwhile
        if row is None:
            raise _invalid(
                "detection_id",
                f"no frame is stored under detection_id {feedback.detection_id}: it was evicted (the device keeps "
                "its latest frames only), dropped, or never captured; send image_sha256, or upload the frame "
                "to /v1/feedback/upload",
            )
        record["image_sha256"] = row["sha256"]
        if record["model_version"] is None:
            record["model_version"] = row["model_version"]  # the model that made the detection
        extra = {"image_sha256": row["sha256"], "frame_kept": True}
    return await _queue(request, record, idempotency_key, **extra)


def _field_errors(exc: ValidationError, prefix: str) -> list[dict]:
    return [
        {"field": ".".join([prefix, *(str(p) for p in err.get("loc", ()))]), "message": err.get("msg", "")}
        for err in exc.errors()
    ]


@router.post("/v1/feedback/upload", dependencies=[Depends(require_token)])
async def post_feedback_upload(request: Request, idempotency_key: str | None = Header(None, max_length=200)):
    """A correction with its frame: multipart ``file`` (the image) + ``feedback`` (the JSON record, as for
    /v1/feedback; the image is the uploaded file). The frame is kept for the lake (flagged, ``uploaded``) and
    the record carries its sha256."""
    state = request.app.state
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with the frame as part 'file' and the record as JSON field 'feedback'",
        )
    store = getattr(state, "capture", None)
    if store is None:
        raise ApiError(
            501,
            "capture_off",
            "capture is off on this device (ALUMI_EDGE_CAPTURE=false, or its store could not be opened: see the "
            "server log): uploaded frames cannot be kept; "
            "send the correction with image_sha256 or image_ref to /v1/feedback",
        )
    form = await request.form(max_files=2, max_fields=16)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "no_file", "multipart body has no file part (send the frame as field 'file')")
    raw = form.get("feedback")
    if isinstance(raw, UploadFile):
        raw = await raw.read()
    if not raw:
        raise _invalid("feedback", "field 'feedback' (the JSON record) is required")
    try:
        feedback = FeedbackFields.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _field_errors(exc, "feedback")) from exc
    _check_class(state.holder.loaded, feedback.class_name, "feedback.class_name")
    try:
        data = await upload.read()
    finally:
        await upload.close()
    try:
        image = await state.run_blocking(
            decode_image, data, state.settings.max_image_pixels, state.settings.max_decoded_bytes
        )
    except UnsupportedImageType as exc:
        raise ApiError(415, "unsupported_media_type", str(exc)) from exc
    except CorruptImage as exc:
        raise ApiError(400, "corrupt_image", str(exc)) from exc
    except ImageTooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc)) from exc
    height, width = image.shape[:2]
    sha = hashlib.sha256(data).hexdigest()
    if feedback.image_sha256 and feedback.image_sha256 != sha:
        raise _invalid("feedback.image_sha256", f"does not match the uploaded file ({sha})")
    _check_inside(feedback, width, height, prefix="feedback.")
    record = feedback.model_dump()
    record["image_sha256"] = sha
    loaded = state.holder.loaded
    model_version = record["model_version"] or (loaded.version if loaded is not None else None)
    row = await state.run_blocking(
        functools.partial(
            store.keep_upload,
            data,
            model_version=model_version,
            prediction={"boxes": [], "image": {"width": width, "height": height, "sha256": sha}},
        )
    )
    return await _queue(request, record, idempotency_key, image_sha256=sha, frame_id=row["id"], frame_kept=True)


@router.get("/v1/feedback/{feedback_id}", dependencies=[Depends(require_token)])
async def get_feedback(request: Request, feedback_id: str):
    """A queued record and whether it has been synced."""
    record = await request.app.state.run_blocking(request.app.state.queue.get, feedback_id)
    if record is None:
        raise ApiError(404, "not_found", f"no feedback with id {feedback_id!r}")
    return record
