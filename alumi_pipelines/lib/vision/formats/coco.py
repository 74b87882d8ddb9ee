"""COCO: JSON files with ``images``, ``categories`` and ``annotations`` (``bbox`` or polygon ``segmentation``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from alumi_pipelines.lib.vision.formats.model import SourceBox
from alumi_pipelines.lib.vision.formats.pairing import Batch, Record
from alumi_pipelines.lib.vision.formats.values import bounding, finite_number, hashable, positive_int, size_problem


def parse_coco(batch: Batch, class_names: list[str] | None) -> None:
    for path in batch.with_suffix(".json"):
        batch.claim(path)
        doc = batch.read_json(path)
        if doc is None:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            batch.reject(path, "not a COCO file: no 'images' list")
            continue
        _parse_coco_file(batch, path, doc)


def _parse_coco_file(batch: Batch, path: str, doc: dict) -> None:
    categories: dict[object, str] = {}
    if not isinstance(doc.get("categories", []), list):
        batch.reject(path, "'categories' is not a list")
        return
    for entry in doc.get("categories") or []:
        if (
            isinstance(entry, dict)
            and hashable(entry.get("id"))
            and isinstance(entry.get("name"), str)
            and entry["name"].strip()
        ):
            categories[entry["id"]] = entry["name"].strip()
        else:
            batch.reject(path, f"category entry {entry!r}: needs an 'id' and a non-empty 'name'")
    by_id: dict[object, list[dict]] = defaultdict(list)
    for entry in doc["images"]:
        if not isinstance(entry, dict) or not hashable(entry.get("id")) or not isinstance(entry.get("file_name"), str):
            batch.reject(path, f"images entry {str(entry)[:80]}: needs an 'id' and a 'file_name' string")
            continue
        by_id[entry["id"]].append(entry)
    entries = {image_id: same[0] for image_id, same in by_id.items() if len(same) == 1}
    annotations = doc.get("annotations")
    for image_id, same in by_id.items():
        if len(same) > 1:
            used = sum(isinstance(a, dict) and a.get("image_id") == image_id for a in annotations or [])
            names = ", ".join(repr(e["file_name"]) for e in same)
            batch.reject(
                path,
                f"images entries id {image_id!r} ({names}): id used {len(same)} times in 'images', so its "
                f"annotations cannot be attributed ({used} not used)",
            )
    if annotations is None:
        batch.notes.append(f"{path}: no 'annotations' list; its {len(entries)} images are treated as unlabelled")
        return
    if not isinstance(annotations, list):
        batch.reject(path, "'annotations' is not a list")
        return
    boxes_of: dict[object, list[SourceBox]] = defaultdict(list)
    problems_of: dict[object, list[str]] = defaultdict(list)  # rejected annotations of a known image
    duplicate_ids = {image_id for image_id, same in by_id.items() if len(same) > 1}
    for entry in annotations:
        if isinstance(entry, dict) and hashable(entry.get("image_id")) and entry["image_id"] in duplicate_ids:
            continue  # counted in the duplicate-id rejection
        image_id, box, problem = _coco_annotation(entry, categories, entries)
        if problem:
            batch.reject(path, problem)
            owner = entry.get("image_id") if isinstance(entry, dict) else None
            if hashable(owner) and owner in entries:
                problems_of[owner].append(problem)
        else:
            boxes_of[image_id].append(box)
    for image_id, entry in entries.items():
        origin = f"images entry id {image_id!r} of {path}"
        image, reason, note = batch.pair_by_name(entry["file_name"], path, relative_to_annotation=False)
        if image is None:
            lost = len(boxes_of.get(image_id, []))
            unused = f" ({lost} boxes not used)" if lost else ""
            batch.reject(path, f"images entry id {image_id!r}: {reason}" + unused)
            continue
        if note:
            batch.notes.append(note)
        boxes = [
            SourceBox(b.class_name, b.x1, b.y1, b.x2, b.y2, False, f"{b.origin} ({image})")
            for b in boxes_of.get(image_id, [])
        ]
        batch.add(
            Record(
                path,
                image,
                boxes,
                origin,
                positive_int(entry.get("width")),
                positive_int(entry.get("height")),
                problems=problems_of.get(image_id, []),
            )
        )


def _coco_annotation(
    entry: object, categories: Mapping[object, str], images: Mapping[object, dict]
) -> tuple[object, SourceBox | None, str | None]:
    """(image id, box, problem) for one COCO annotation."""
    if not isinstance(entry, dict):
        return None, None, f"annotation {str(entry)[:80]}: not an object"
    origin = f"annotation id {entry.get('id', '?')!r}"
    image_id = entry.get("image_id")
    if not hashable(image_id) or image_id not in images:
        return None, None, f"{origin}: image_id {image_id!r} is not in 'images'"
    if not hashable(entry.get("category_id")) or entry["category_id"] not in categories:
        return None, None, f"{origin}: category_id {entry.get('category_id')!r} is not in 'categories'"
    if entry.get("iscrowd") in (1, True):
        return None, None, f"{origin}: iscrowd=1 (a crowd region, not one object)"
    bbox = entry.get("bbox")
    if bbox is None and isinstance(entry.get("segmentation"), list) and entry["segmentation"]:
        points = []
        for polygon in entry["segmentation"]:
            values = [finite_number(v) for v in polygon] if isinstance(polygon, list) else [None]
            if None in values or len(values) < 6 or len(values) % 2:
                return None, None, f"{origin}: no 'bbox' and 'segmentation' is not a list of polygons"
            points.extend(zip(values[0::2], values[1::2]))
        x1, y1, x2, y2 = bounding(points)
    else:
        values = [finite_number(v) for v in bbox] if isinstance(bbox, list) else []
        if len(values) != 4 or None in values:
            return None, None, f"{origin}: 'bbox' must be 4 finite numbers [x, y, width, height], got {bbox!r}"
        x, y, w, h = values
        x1, y1, x2, y2 = x, y, x + w, y + h
    problem = size_problem(x1, y1, x2, y2)
    if problem:
        return None, None, f"{origin}: {problem}"
    return image_id, SourceBox(categories[entry["category_id"]], x1, y1, x2, y2, False, origin), None
