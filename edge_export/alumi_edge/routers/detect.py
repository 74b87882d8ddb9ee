"""POST /v1/detect: an image in (multipart field ``file`` or the raw body), boxes in original pixels out.

A multipart body must carry the image in the field ``file``; a file under any other name is refused (400), so a
client that sends the wrong field learns it at once. The image's size is checked from its header before
decoding (413 over ``max_image_pixels`` or ``max_decoded_bytes``).

Every answer carries an ``id`` (the detection id, 32 hex digits). With capture on, the frame and its prediction
are handed to the capture store under that id (a queue put, the writing happens on the store's thread), so an
operator can flag it later with ``POST /v1/feedback {"detection_id": ...}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from alumi_edge.auth import require_token
from alumi_edge.capture import Frame
from alumi_edge.errors import ApiError
from alumi_edge.imaging import CorruptImage, ImageTooLarge, UnsupportedImageType, decode_image
from alumi_edge.serving import LoadedModel

router = APIRouter(tags=["detect"])


async def _read_image_bytes(request: Request) -> bytes:
    """The uploaded file of a multipart body, else the raw body (any Content-Type: the bytes decide)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            others = sorted({name for name, value in form.multi_items() if isinstance(value, UploadFile)})
            for value in form.values():
                if isinstance(value, UploadFile):
                    await value.close()
            named = f"a file in field {others[0]!r}" if others else "no file part"
            raise ApiError(400, "no_file", f"multipart body has {named}: send the image as field 'file'")
        try:
            return await upload.read()
        finally:
            await upload.close()
    return await request.body()


def _run_detection(
    loaded: LoadedModel, data: bytes, conf: float, iou: float, max_det: int, max_pixels: int, max_decoded: int
):
    """Decode (the size checked from the header first) and detect; runs in the inference thread pool."""
    start = time.perf_counter()
    image = decode_image(data, max_pixels=max_pixels, max_decoded_bytes=max_decoded)
    decode_ms = round((time.perf_counter() - start) * 1000.0, 3)
    result = loaded.runtime.detect(image, conf=conf, iou=iou, max_det=max_det)
    return result, decode_ms


@router.post("/v1/detect", dependencies=[Depends(require_token)])
async def detect(
    request: Request,
    conf: float | None = Query(None, ge=0.0, le=1.0, description="confidence threshold (default from settings)"),
    iou: float | None = Query(None, ge=0.0, le=1.0, description="NMS IoU threshold (default from settings)"),
    max_det: int | None = Query(None, ge=1, le=10000),
):
    """Detect defects on one image."""
    state = request.app.state
    settings, metrics = state.settings, state.metrics
    loaded: LoadedModel | None = state.holder.loaded
    if loaded is None:
        metrics.rejected.labels(reason="no_model").inc()
        raise ApiError(503, "model_not_loaded", state.holder.last_error or "no model is loaded yet")
    start = time.perf_counter()
    data = await _read_image_bytes(request)
    loop = asyncio.get_running_loop()
    try:
        result, decode_ms = await loop.run_in_executor(
            state.executor,
            _run_detection,
            loaded,
            data,
            settings.conf if conf is None else conf,
            settings.iou if iou is None else iou,
            settings.max_det if max_det is None else max_det,
            settings.max_image_pixels,
            settings.max_decoded_bytes,
        )
    except UnsupportedImageType as exc:
        metrics.rejected.labels(reason="not_an_image").inc()
        raise ApiError(415, "unsupported_media_type", str(exc)) from exc
    except CorruptImage as exc:
        metrics.rejected.labels(reason="corrupt_image").inc()
        raise ApiError(400, "corrupt_image", str(exc)) from exc
    except ImageTooLarge as exc:
        metrics.rejected.labels(reason="too_many_pixels").inc()
        raise ApiError(413, "image_too_large", str(exc)) from exc
    total_s = time.perf_counter() - start
    metrics.detect_latency.observe(total_s)
    metrics.stage_latency.labels(stage="decode").observe(decode_ms / 1000.0)
    for stage in ("preprocess", "inference", "postprocess"):
        metrics.stage_latency.labels(stage=stage).observe(result.timing_ms[stage] / 1000.0)
    for box in result.boxes:
        metrics.detections.labels(class_name=box.class_name).inc()
    body = {
        "id": uuid.uuid4().hex,
        "model_version": loaded.version,
        "runtime": loaded.runtime.name,
        "boxes": [box.to_dict() for box in result.boxes],
        "timing_ms": {"decode": decode_ms, **result.timing_ms, "request": round(total_s * 1000.0, 3)},
        "image": {"width": result.width, "height": result.height, "sha256": hashlib.sha256(data).hexdigest()},
    }
    store = getattr(state, "capture", None)
    if store is not None:  # a put_nowait: a full queue drops the frame (counted), never delays the answer
        prediction = {"boxes": body["boxes"], "image": body["image"], "timing_ms": body["timing_ms"]}
        store.submit(Frame(body["id"], data, loaded.version, prediction))
    # Every value is already a JSON type (str, int, float, lists and dicts of them): answering with a
    # JSONResponse skips FastAPI's generic per-value encoder. Nothing changes ``body`` after this point, so the
    # capture writer may read the same lists.
    return JSONResponse(body)
