"""LabelMe: one JSON file per image with ``shapes``; rectangles, polygons, lines and circles become boxes."""

from __future__ import annotations

import math

from alumi_pipelines.lib.vision.formats.model import SourceBox
from alumi_pipelines.lib.vision.formats.pairing import Batch, Record
from alumi_pipelines.lib.vision.formats.values import bounding, finite_number, positive_int, size_problem


def parse_labelme(batch: Batch, class_names: list[str] | None) -> None:
    for path in batch.with_suffix(".json"):
        batch.claim(path)
        doc = batch.read_json(path)
        if doc is None:
            batch.hold_out_unreadable(path)
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
            batch.reject(path, "not a LabelMe file: no 'shapes' list")
            batch.hold_out_unreadable(path)
            continue
        image_path = doc.get("imagePath")
        if isinstance(image_path, str) and image_path.strip():
            image, reason, note = batch.pair_by_name(image_path.strip(), path, relative_to_annotation=True)
        else:
            (image, reason), note = batch.pair_by_stem(path), None
        if image is None:
            batch.reject(path, reason or "no image")
            continue
        if note:
            batch.notes.append(note)
        boxes: list[SourceBox] = []
        for number, shape in enumerate(doc["shapes"], 1):
            box, problem = _labelme_shape(shape, f"shape {number}")
            if problem:
                batch.reject(path, problem)
            else:
                boxes.append(box)
        batch.add(
            Record(path, image, boxes, path, positive_int(doc.get("imageWidth")), positive_int(doc.get("imageHeight")))
        )


_LABELME_MIN_POINTS = {"rectangle": 2, "polygon": 3, "linestrip": 2, "line": 2, "circle": 2}


def _labelme_shape(shape: object, origin: str) -> tuple[SourceBox | None, str | None]:
    """A box from one LabelMe shape: rectangles, polygons, lines and circles become their bounds."""
    if not isinstance(shape, dict):
        return None, f"{origin}: not an object"
    label = shape.get("label")
    if not isinstance(label, str) or not label.strip():
        return None, f"{origin}: missing 'label'"
    label = label.strip()
    origin = f"{origin} ({label})"
    kind = shape.get("shape_type") or "polygon"
    raw_points = shape.get("points")
    points: list[tuple[float, float]] = []
    for point in raw_points if isinstance(raw_points, list) else [None]:
        xy = [finite_number(v) for v in point] if isinstance(point, list) else []
        if len(xy) != 2 or None in xy:
            return None, f"{origin}: 'points' must be a list of [x, y] number pairs"
        points.append((xy[0], xy[1]))
    if kind == "point":
        return None, f"{origin}: a point has no extent, so it is not a box"
    if not isinstance(kind, str) or kind not in _LABELME_MIN_POINTS:
        return None, f"{origin}: shape_type {kind!r} is not supported (rectangle, polygon, linestrip, line, circle)"
    if len(points) < _LABELME_MIN_POINTS[kind]:
        return None, f"{origin}: a {kind} needs at least {_LABELME_MIN_POINTS[kind]} points, got {len(points)}"
    if kind == "circle":
        (cx, cy), (px, py) = points[0], points[1]
        radius = math.hypot(px - cx, py - cy)
        x1, y1, x2, y2 = cx - radius, cy - radius, cx + radius, cy + radius
    else:
        x1, y1, x2, y2 = bounding(points)
    problem = size_problem(x1, y1, x2, y2)
    if problem:
        return None, f"{origin}: {kind} has {problem}"
    return SourceBox(label, x1, y1, x2, y2, False, origin), None
