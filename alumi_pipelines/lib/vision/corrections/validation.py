"""Validating parsed corrections against the lake's images and the class map.

A correction is valid when its image is in the lake, it has an author and an ISO 8601 time not in the
future (beyond a clock skew), its classes resolve through the class map and its boxes lie inside the image
(edges up to :data:`BOX_TOLERANCE_PX` outside are clamped). A COCO relabel measured on a resized copy is
rescaled to the original when the aspect ratio agrees within :data:`ASPECT_TOLERANCE`. Each rejected
record gets one reason: the first rule it broke. With ``max_pixels`` a correction of an image larger than that
(an image ingested under a higher limit) or measured on a frame declared larger is rejected: no later step
decodes or rescales beyond the pixel limit. Identical repeats of a correction id are kept once; an
id repeated with different content rejects the later record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from alumi_pipelines.lib.vision.corrections.records import (
    ACTIONS,
    LEVELS,
    Box,
    Correction,
    canonical_timestamp,
    parse_timestamp,
    reject,
)
from alumi_pipelines.lib.vision.labels import ClassMap, UnknownClassError

BOX_TOLERANCE_PX = 0.5  # a box edge up to this far outside the image is clamped (UI rounding), beyond is rejected
ASPECT_TOLERANCE = 0.01  # COCO frame vs original aspect ratio, relative
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)


def class_map(classes: ClassMap | Iterable[str]) -> ClassMap:
    """``classes`` as a :class:`ClassMap`: a class map as is, plain class names without aliases."""
    return classes if isinstance(classes, ClassMap) else ClassMap.of(classes)


def _check_box(box: Box, width: int, height: int, what: str) -> tuple[Box | None, str | None]:
    """The box clamped to the image, or a reason it is not a box inside the image."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return None, f"{what} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no area: needs x2 > x1 and y2 > y1"
    tol = BOX_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        return None, f"{what} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is outside the image ({width}x{height} pixels)"
    clamped = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    if clamped[2] <= clamped[0] or clamped[3] <= clamped[1]:
        return None, f"{what} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has no area inside the image ({width}x{height} pixels)"
    return clamped, None


def _rescale(box: Box, sx: float, sy: float) -> Box:
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _image_table(images: pl.DataFrame) -> dict[str, tuple[int, int, str | None]]:
    missing = [c for c in ("image_id", "orig_width", "orig_height") if c not in images.columns]
    if missing:
        raise ValueError(f"images table: missing column(s) {', '.join(missing)}")
    has_batch = "batch" in images.columns
    cols = ["image_id", "orig_width", "orig_height"] + (["batch"] if has_batch else [])
    table: dict[str, tuple[int, int, str | None]] = {}
    for row in images.select(cols).sort(["image_id", "batch"] if has_batch else ["image_id"]).iter_rows():
        if row[0] not in table:
            table[row[0]] = (int(row[1]), int(row[2]), row[3] if has_batch else None)
    return table


def validate(
    records: Sequence[Correction],
    images: pl.DataFrame,
    classes: ClassMap | Iterable[str],
    *,
    now: datetime | None = None,
    max_clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    max_pixels: int | None = None,
) -> tuple[list[Correction], list[dict]]:
    """Keep the corrections that can be applied; reject the rest with the rule each one broke.

    ``images`` holds image_id, orig_width, orig_height (and batch, when known). Valid corrections come
    back with canonical class names, canonical UTC timestamps, boxes in original pixels and the image's
    size and batch filled in. Identical repeats of an id are kept once; an id repeated with different
    content rejects the later record.
    """
    cmap = class_map(classes)
    known = _image_table(images)
    limit = (now or datetime.now(UTC)).astimezone(UTC) + max_clock_skew
    first_seen: dict[str, Correction] = {}
    valid: list[Correction] = []
    rejects: list[dict] = []
    for rec in records:
        seen = first_seen.get(rec.correction_id)
        if seen is not None:
            if seen.content() != rec.content():
                where = f"{seen.source_file}" + (f" line {seen.line}" if seen.line is not None else "")
                reason = f"duplicate correction id {rec.correction_id!r} with different content (first seen in {where})"
                rejects.append(reject(rec.source_file, rec.line, rec.correction_id, reason))
            continue
        first_seen[rec.correction_id] = rec
        checked, reason = _validate_one(rec, known, cmap, limit, max_pixels)
        if reason:
            rejects.append(reject(rec.source_file, rec.line, rec.correction_id, reason))
        else:
            valid.append(checked)
    return valid, rejects


def _validate_one(
    rec: Correction, known, cmap: ClassMap, limit: datetime, max_pixels: int | None = None
) -> tuple[Correction | None, str | None]:
    if rec.action not in ACTIONS:
        return None, f"action {rec.action!r} is not one of {', '.join(ACTIONS)}"
    if rec.level not in LEVELS:
        return None, f"level {rec.level!r} is not one of {', '.join(LEVELS)}"
    if rec.image_id is None:
        return None, f"unknown image: image reference {rec.image_ref!r} does not resolve to an image id"
    if rec.image_id not in known:
        return None, f"unknown image: {rec.image_id!r} is not in the lake"
    width, height, batch = known[rec.image_id]
    if max_pixels is not None:
        for what, (w, h) in (("image", (width, height)), ("annotated frame", rec.frame or (0, 0))):
            if w * h > max_pixels:
                return (
                    None,
                    f"{what} of {w}x{h} pixels exceeds the pixel limit of {max_pixels:,} (ALUMI_MAX_IMAGE_PIXELS)",
                )
    if not rec.author.strip():
        return None, "author is missing"
    if not rec.timestamp:
        return None, "timestamp is missing"
    try:
        moment = parse_timestamp(rec.timestamp)
    except ValueError:
        return None, f"timestamp {rec.timestamp!r} is not an ISO 8601 time"
    if moment > limit:
        return None, f"timestamp {rec.timestamp} is in the future"

    sx = sy = 1.0
    if rec.frame is not None and rec.frame != (width, height):
        fw, fh = rec.frame
        if fw <= 0 or fh <= 0 or abs((fw / fh) / (width / height) - 1.0) > ASPECT_TOLERANCE:
            return None, (
                f"annotated image size {fw}x{fh} does not match the original {width}x{height} (aspect ratio differs)"
            )
        sx, sy = width / fw, height / fh

    updates: dict[str, Any] = {}
    if rec.action == "relabel":
        boxes = []
        for index, (name, box) in enumerate(rec.boxes):
            try:
                canonical, _ = cmap.resolve(name)
            except UnknownClassError:
                return None, f"unknown class {name!r} (box {index}); classes are {list(cmap.names)}"
            clamped, reason = _check_box(_rescale(box, sx, sy), width, height, f"box {index}")
            if reason:
                return None, reason
            boxes.append((canonical, clamped))
        updates["boxes"] = tuple(boxes)
    else:
        if not rec.class_name:
            return None, "class_name is missing"
        try:
            updates["class_name"], _ = cmap.resolve(rec.class_name)
        except UnknownClassError:
            return None, f"unknown class {rec.class_name!r}; classes are {list(cmap.names)}"
        if rec.box is None:
            return None, "box is missing"
        updates["box"], reason = _check_box(_rescale(rec.box, sx, sy), width, height, "box")
        if reason:
            return None, reason
        if rec.match_box is not None:
            updates["match_box"], reason = _check_box(_rescale(rec.match_box, sx, sy), width, height, "original_box")
            if reason:
                return None, reason
    return dataclasses.replace(
        rec,
        **updates,
        frame=None,
        timestamp=canonical_timestamp(moment),
        image_width=width,
        image_height=height,
        batch=batch,
    ), None
