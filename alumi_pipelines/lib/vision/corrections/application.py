"""Applying validated corrections to the canonical (processed) labels: an overlay and a changes table.

Semantics of :func:`apply` (IoU is scale-invariant, so it is computed on normalised boxes):

- add: adds the box.
- remove: removes the label box of the same class with the highest IoU ≥ 0.5; with none, a no-op change
  (result ``no_match``) is recorded.
- replace: replaces the box (any class) with the highest IoU ≥ 0.1 with the match box (``original_box``
  when the edge sent one, else the new box); with none, the new box is added.
- relabel (a QA COCO image): the image's label set becomes exactly the given boxes.

Conflict rule: QA beats operator, newer beats older. All operator corrections are applied first in
timestamp order, then all QA corrections in timestamp order (ties broken by correction id), so a QA
relabel overrides every operator change to that image whatever their times, and within one level the
newest correction is applied last.

Idempotency: corrections are keyed by id; an id seen again with identical content is the same
correction (kept once), with different content the later record is rejected. :func:`apply` always starts
from the uncorrected (processed) labels and recomputes the overlay from every valid correction, so
re-running with the same corrections, or with a superset that only repeats ids, yields identical bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from alumi_pipelines.lib.boxes import iou_cxcywh
from alumi_pipelines.lib.vision.corrections.records import (
    CORRECTION_SOURCE,
    LEVELS,
    Box,
    Correction,
    canonical_timestamp,
    change_schema,
    corrections_from_frame,
    parse_timestamp,
)
from alumi_pipelines.lib.vision.corrections.validation import class_map
from alumi_pipelines.lib.vision.labels import ClassMap, label_schema

REMOVE_MIN_IOU = 0.5
REPLACE_MIN_IOU = 0.1

_LabelBox = tuple[int, str, float, float, float, float]  # class_id, class_name, x_center, y_center, width, height


def _normalise(class_name: str, box: Box, width: int, height: int, cmap: ClassMap) -> _LabelBox:
    name, class_id = cmap.resolve(class_name)
    x1, y1, x2, y2 = box
    return (class_id, name, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)


def _box_json(box: _LabelBox | None) -> dict | None:
    if box is None:
        return None
    return {
        "class_name": box[1],
        "x_center": round(box[2], 6),
        "y_center": round(box[3], 6),
        "width": round(box[4], 6),
        "height": round(box[5], 6),
    }


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _best_match(state: list[_LabelBox], target: _LabelBox, min_iou: float, same_class: bool) -> int | None:
    best, best_iou = None, min_iou
    for index, box in enumerate(state):
        if same_class and box[0] != target[0]:
            continue
        iou = iou_cxcywh(box[2:6], target[2:6])
        if iou >= best_iou and (best is None or iou > best_iou):
            best, best_iou = index, iou
    return best


def _dedupe(records: Sequence[Correction]) -> list[Correction]:
    """One record per correction id; a repeated id must repeat the same content."""
    by_id: dict[str, Correction] = {}
    for rec in records:
        seen = by_id.get(rec.correction_id)
        if seen is None:
            by_id[rec.correction_id] = rec
        elif seen.content() != rec.content():
            raise ValueError(
                f"correction id {rec.correction_id!r} appears with different content: run validate() first"
            )
    return list(by_id.values())


def _base_label_sets(labels: pl.DataFrame, image_ids: set[str]) -> dict[str, tuple[str, list[_LabelBox]]]:
    """image_id -> (batch, boxes) of the label set gold would choose: the first (batch, source_file) group."""
    rows = (
        labels.filter(pl.col("image_id").is_in(sorted(image_ids)))
        .sort(["image_id", "batch", "source_file"])
        .select("image_id", "batch", "source_file", "class_id", "class_name", "x_center", "y_center", "width", "height")
    )
    chosen: dict[str, tuple[str, str, list[_LabelBox]]] = {}
    for image_id, batch, source_file, class_id, class_name, x, y, w, h in rows.iter_rows():
        if image_id not in chosen:
            chosen[image_id] = (batch, source_file, [])
        if chosen[image_id][:2] != (batch, source_file):
            continue
        chosen[image_id][2].append((int(class_id), class_name, x, y, w, h))
    return {k: (batch, sorted(set(boxes))) for k, (batch, _, boxes) in chosen.items()}


def _application_order(rec: Correction) -> tuple:
    return (LEVELS.index(rec.level), canonical_timestamp(parse_timestamp(rec.timestamp)), rec.correction_id)


def apply(
    labels: pl.DataFrame,
    valid: Sequence[Correction] | pl.DataFrame,
    classes: ClassMap | Iterable[str],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply validated corrections to the uncorrected canonical labels.

    Returns (overlay, changes). The overlay holds the full label set of every image a correction changed
    (canonical rows, source="correction", source_file = the last correction applied to that image); an
    image whose boxes were all removed has no rows, so use :func:`corrected_labels` to merge. The changes
    table has one row per correction in application order, with the box before and after as JSON.
    """
    cmap = class_map(classes)
    records = corrections_from_frame(valid) if isinstance(valid, pl.DataFrame) else list(valid)
    if labels.height and (labels["source"] == CORRECTION_SOURCE).any():
        raise ValueError(
            "labels already contain corrected rows (source='correction'): apply corrections to the processed labels"
        )
    records = _dedupe(records)
    for rec in records:
        if rec.image_width is None or rec.image_height is None or rec.image_id is None:
            raise ValueError(
                f"correction {rec.correction_id!r} has no image size: pass records through validate() first"
            )
    records.sort(key=_application_order)

    base = _base_label_sets(labels, {r.image_id for r in records})  # type: ignore[misc]
    state: dict[str, list[_LabelBox]] = {}
    batch_of: dict[str, str] = {}
    last_applied: dict[str, str] = {}
    changes = []
    for order, rec in enumerate(records):
        image_id = rec.image_id
        assert image_id is not None and rec.image_width and rec.image_height
        if image_id not in state:
            batch, boxes = base.get(image_id, (rec.batch or "", []))
            state[image_id], batch_of[image_id] = list(boxes), batch
        boxes = state[image_id]
        before: Any = None
        after: Any = None
        result = "applied"
        if rec.action == "relabel":
            new = sorted({_normalise(name, box, rec.image_width, rec.image_height, cmap) for name, box in rec.boxes})
            before, after = [_box_json(b) for b in boxes], [_box_json(b) for b in new]
            state[image_id] = new
        else:
            size = (rec.image_width, rec.image_height)
            target = _normalise(rec.class_name, rec.box, *size, cmap)  # type: ignore[arg-type]
            if rec.action == "add":
                boxes.append(target)
                after = _box_json(target)
            elif rec.action == "remove":
                hit = _best_match(boxes, target, REMOVE_MIN_IOU, same_class=True)
                if hit is None:
                    result = "no_match"
                else:
                    before = _box_json(boxes.pop(hit))
            else:  # replace
                probe = target
                if rec.match_box is not None:
                    probe = _normalise(rec.class_name, rec.match_box, *size, cmap)  # type: ignore[arg-type]
                hit = _best_match(boxes, probe, REPLACE_MIN_IOU, same_class=False)
                if hit is not None:
                    before = _box_json(boxes.pop(hit))
                boxes.append(target)
                after = _box_json(target)
            state[image_id] = sorted(boxes)
        if result == "applied":
            last_applied[image_id] = rec.correction_id
        changes.append(
            {
                "order": order,
                "correction_id": rec.correction_id,
                "image_id": image_id,
                "action": rec.action,
                "kind": rec.kind,
                "author": rec.author,
                "origin": rec.origin,
                "level": rec.level,
                "timestamp": rec.timestamp,
                "before": _dump(before),
                "after": _dump(after),
                "result": result,
                "source_file": rec.source_file,
            }
        )

    overlay_rows = [
        {
            "image_id": image_id,
            "class_name": name,
            "class_id": class_id,
            "x_center": x,
            "y_center": y,
            "width": w,
            "height": h,
            "source": CORRECTION_SOURCE,
            "source_file": last_applied[image_id],
            "batch": batch_of[image_id],
        }
        for image_id in sorted(last_applied)
        for class_id, name, x, y, w, h in state[image_id]
    ]
    overlay = pl.DataFrame(overlay_rows, schema=label_schema(), orient="row").sort(
        ["image_id", "class_id", "x_center", "y_center", "width", "height"]
    )
    return overlay, pl.DataFrame(changes, schema=change_schema(), orient="row")


def corrected_labels(labels: pl.DataFrame, overlay: pl.DataFrame, changes: pl.DataFrame) -> pl.DataFrame:
    """The labels with every image a correction changed replaced by its overlay rows (possibly none)."""
    touched = changes.filter(pl.col("result") == "applied")["image_id"].unique().sort()
    kept = labels.filter(~pl.col("image_id").is_in(touched.implode()))
    return pl.concat([kept.select(overlay.columns).cast(label_schema()), overlay]).sort(
        ["image_id", "batch", "source_file", "class_id", "x_center", "y_center", "width", "height"]
    )
