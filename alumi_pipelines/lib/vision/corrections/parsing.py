"""Parsing the incoming correction files (edge JSONL, QA CSV, QA COCO) into :class:`Correction` records.

Accepted inputs (files in ``corrections/incoming/``, dispatched on the file suffix by :func:`parse_incoming`):

``*.jsonl`` — edge feedback written by ``alumi-edge sync`` (``edge-<device>-<first>-<last>.jsonl``), one
JSON object per line::

    feedback_id   str, required   idempotency key; becomes the correction id
    kind          required        false_positive | missed_defect | corrected_box
    image_sha256  str             sha256 of the original image bytes (the image_id) ...
    image_ref     str             ... or a camera file name, resolved through ``names`` when given
    box           required        {"x1", "y1", "x2", "y2"} in pixels of the original image
    original_box  optional        corrected_box only: the box the model returned (used for matching)
    class_name    str, required
    author        str, required
    created_at    str, required   ISO 8601 time the operator posted it (the correction's timestamp)
    device_id     str, required   the origin
    (seq, comment, model_version, token_subject, ... are carried by the edge and ignored here)

``*.json`` — a COCO export from a QA annotation tool. Each COCO image is a full relabel of that image:
its annotations replace every box the image had. The image is found by an explicit ``sha256`` field, by
a ``file_name`` whose stem is the sha256, or by ``file_name`` through ``names``. Author and timestamp come
from the image (``author``/``annotator``, ``timestamp``/``date_modified``) or from ``info``
(``contributor``, ``date_created``); the tool from ``info.tool``/``info.description``. If the COCO image's
``width``/``height`` differ from the original's, its boxes are rescaled when the aspect ratio agrees and
rejected otherwise (by validation). The correction id is ``<file name>#<COCO image id>`` unless the image
carries ``correction_id``.

``*.json`` holding a list — reviewed tasks pulled from Label Studio (``review_sensor``), in Label Studio's own
JSON export layout: ``id``, ``project``, ``data`` (``image_id``: the sha256; ``image``, ``width``, ``height``) and
``annotations`` (``id``, ``completed_by`` (e-mail or user id), ``updated_at``, ``was_cancelled``, ``result``).
Each annotation is a full relabel of the image, at the level of QA: its rectangles (percent of the frame the
reviewer saw) become the image's boxes; a skipped task or the "no defect" verdict means no boxes. The id is
``label-studio:<project>:<task>:<annotation>@<updated_at>``, so an annotation edited later is a new, newer
correction that supersedes the earlier one, and the same version pulled twice is one correction.

``*.csv`` — a QA table with columns correction_id, image_id, action (add | remove | replace), class_name,
x1, y1, x2, y2 (pixels of the original image), author, timestamp, tool.

Edge kinds map to actions: missed_defect → add, false_positive → remove, corrected_box → replace.

Parsing checks the shape of each record only; whether its image, class, box and time are acceptable is
decided by validation.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from alumi_pipelines.lib.vision.corrections.records import Box, Correction, reject

EDGE_KINDS = {"missed_defect": "add", "false_positive": "remove", "corrected_box": "replace"}
CSV_COLUMNS = (
    "correction_id",
    "image_id",
    "action",
    "class_name",
    "x1",
    "y1",
    "x2",
    "y2",
    "author",
    "timestamp",
    "tool",
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_incoming(
    name: str, data: bytes, *, names: Mapping[str, str] | None = None
) -> tuple[list[Correction], list[dict]]:
    """Parse one incoming file (edge JSONL, QA COCO JSON or QA CSV) into corrections and rejects.

    ``names`` maps image file names (full or base name) to image ids, for COCO ``file_name`` and edge
    ``image_ref``.
    """
    suffix = PurePosixPath(name).suffix.lower()
    parsers = {".jsonl": _parse_edge_jsonl, ".json": _parse_coco, ".csv": _parse_csv}
    if suffix not in parsers:
        reason = f"unsupported file type {suffix or '(none)'!r}: expected .jsonl, .json or .csv"
        return [], [reject(name, None, None, reason)]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [reject(name, None, None, f"not UTF-8 text ({exc})")]
    return parsers[suffix](name, text, names or {})


# -- fields shared by the three formats ---------------------------------------------------------------


def _lookup_name(ref: str, names: Mapping[str, str]) -> str | None:
    if ref in names:
        return names[ref]
    base = PurePosixPath(ref.replace("\\", "/")).name
    return names.get(base)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"field {field!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"field {field!r} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"field {field!r} must be finite, got {value!r}")
    return number


def _box_object(value: Any, field: str) -> Box:
    if not isinstance(value, dict):
        raise ValueError(f"field {field!r} must be an object with x1, y1, x2, y2 (pixels)")
    missing = [k for k in ("x1", "y1", "x2", "y2") if k not in value]
    if missing:
        raise ValueError(f"field {field!r} is missing {', '.join(missing)}")
    return tuple(_number(value[k], f"{field}.{k}") for k in ("x1", "y1", "x2", "y2"))  # type: ignore[return-value]


def _text(record: Mapping, field: str, *, required: bool = True) -> str | None:
    value = record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ValueError(f"field {field!r} is missing or empty")
        return None
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {value!r}")
    return value.strip()


# -- edge JSONL ---------------------------------------------------------------------------------------


def _parse_edge_jsonl(name: str, text: str, names: Mapping[str, str]) -> tuple[list[Correction], list[dict]]:
    records, rejects = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rejects.append(reject(name, number, None, f"malformed JSON line ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            rejects.append(reject(name, number, None, f"line is JSON {type(obj).__name__}, expected an object"))
            continue
        record_id = obj.get("feedback_id") if isinstance(obj.get("feedback_id"), str) else None
        try:
            records.append(_edge_record(name, number, obj, names))
        except ValueError as exc:
            rejects.append(reject(name, number, record_id, str(exc)))
    return records, rejects


def _edge_record(name: str, number: int, obj: dict, names: Mapping[str, str]) -> Correction:
    feedback_id = _text(obj, "feedback_id")
    kind = obj.get("kind")
    if kind not in EDGE_KINDS:
        raise ValueError(f"field 'kind' is {kind!r}, expected one of {', '.join(EDGE_KINDS)}")
    sha = _text(obj, "image_sha256", required=False)
    ref = _text(obj, "image_ref", required=False)
    if sha is None and ref is None:
        raise ValueError("neither 'image_sha256' nor 'image_ref' is given: the correction has no image")
    image_id = sha.lower() if sha else _lookup_name(ref, names)  # type: ignore[arg-type]
    original = obj.get("original_box")
    return Correction(
        correction_id=feedback_id,  # type: ignore[arg-type]
        kind=kind,
        action=EDGE_KINDS[kind],
        level="operator",
        origin=_text(obj, "device_id"),  # type: ignore[arg-type]
        image_id=image_id,
        image_ref=ref,
        class_name=_text(obj, "class_name", required=False),
        box=_box_object(obj.get("box"), "box"),
        match_box=_box_object(original, "original_box") if original is not None and kind == "corrected_box" else None,
        author=_text(obj, "author", required=False) or "",
        timestamp=_text(obj, "created_at", required=False) or "",
        source_file=name,
        line=number,
    )


# -- QA CSV -------------------------------------------------------------------------------------------


def _parse_csv(name: str, text: str, names: Mapping[str, str]) -> tuple[list[Correction], list[dict]]:
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return [], [reject(name, None, None, "empty CSV file: expected a header row")]
    except csv.Error as exc:
        return [], [reject(name, 1, None, f"unreadable CSV header ({exc})")]
    columns = [c.strip().lower() for c in header]
    missing = [c for c in CSV_COLUMNS if c not in columns]
    if missing:
        reason = f"CSV header is missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}"
        return [], [reject(name, 1, None, reason)]
    index = {c: columns.index(c) for c in CSV_COLUMNS}
    records, rejects = [], []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rejects.append(reject(name, reader.line_num, None, f"unreadable CSV row ({exc})"))
            continue
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            rejects.append(reject(name, number, None, f"row has {len(row)} cells, the header has {len(columns)}"))
            continue
        cell = {c: row[i].strip() for c, i in index.items()}
        record_id = cell["correction_id"] or None
        try:
            records.append(_csv_record(name, number, cell, names))
        except ValueError as exc:
            rejects.append(reject(name, number, record_id, str(exc)))
    return records, rejects


def _csv_record(name: str, number: int, cell: dict[str, str], names: Mapping[str, str]) -> Correction:
    if not cell["correction_id"]:
        raise ValueError("column 'correction_id' is empty")
    action = cell["action"].lower()
    if action not in ("add", "remove", "replace"):
        raise ValueError(f"column 'action' is {cell['action']!r}, expected add, remove or replace")
    if not cell["image_id"]:
        raise ValueError("column 'image_id' is empty")
    image = cell["image_id"]
    image_id = image.lower() if _SHA256.match(image.lower()) else _lookup_name(image, names)
    box = tuple(_number(cell[k], k) for k in ("x1", "y1", "x2", "y2"))
    return Correction(
        correction_id=cell["correction_id"],
        kind=action,
        action=action,
        level="qa",
        origin=cell["tool"] or "qa-csv",
        image_id=image_id,
        image_ref=None if image_id == image.lower() else image,
        class_name=cell["class_name"] or None,
        box=box,  # type: ignore[arg-type]
        author=cell["author"],
        timestamp=cell["timestamp"],
        source_file=name,
        line=number,
    )


# -- QA COCO ------------------------------------------------------------------------------------------


def _parse_coco(name: str, text: str, names: Mapping[str, str]) -> tuple[list[Correction], list[dict]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        return [], [reject(name, exc.lineno, None, reason)]
    if isinstance(doc, list):
        return _parse_labelstudio(name, doc, names)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        return [], [reject(name, None, None, "not a COCO file: expected an object with an 'images' list")]
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    categories: dict[Any, str] = {}
    for cat in doc.get("categories") or []:
        if isinstance(cat, dict) and "id" in cat and isinstance(cat.get("name"), str):
            categories[cat["id"]] = cat["name"]
    annotations: dict[Any, list[dict]] = {}
    rejects = []
    image_ids = {img.get("id") for img in doc["images"] if isinstance(img, dict)}
    for position, ann in enumerate(doc.get("annotations") or []):
        if not isinstance(ann, dict) or ann.get("image_id") not in image_ids:
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            target = ann.get("image_id") if isinstance(ann, dict) else None
            rejects.append(
                reject(
                    name,
                    None,
                    f"annotation {ann_id if ann_id is not None else position}",
                    f"annotation refers to COCO image id {target!r}, which is not in 'images'",
                )
            )
            continue
        annotations.setdefault(ann["image_id"], []).append(ann)
    records = []
    tool = str(info.get("tool") or info.get("description") or "coco")
    for position, img in enumerate(doc["images"]):
        if not isinstance(img, dict):
            rejects.append(reject(name, None, f"image {position}", "COCO image entry is not an object"))
            continue
        record_id = str(img.get("correction_id") or f"{PurePosixPath(name).name}#{img.get('id', position)}")
        try:
            anns = annotations.get(img.get("id"), [])
            records.append(_coco_record(name, record_id, img, anns, categories, info, tool, names))
        except ValueError as exc:
            rejects.append(reject(name, None, record_id, f"COCO image {img.get('file_name')!r}: {exc}"))
    return records, rejects


def _coco_record(name, record_id, img, anns, categories, info, tool, names) -> Correction:
    sha = img.get("sha256")
    file_name = img.get("file_name")
    image_id = None
    if isinstance(sha, str) and sha.strip():
        image_id = sha.strip().lower()
    elif isinstance(file_name, str) and file_name:
        stem = PurePosixPath(file_name.replace("\\", "/")).stem.lower()
        image_id = stem if _SHA256.match(stem) else _lookup_name(file_name, names)
    else:
        raise ValueError("has neither 'sha256' nor 'file_name'")
    frame = None
    if img.get("width") is not None and img.get("height") is not None:
        frame = (int(_number(img["width"], "width")), int(_number(img["height"], "height")))
    boxes = []
    for ann in sorted(anns, key=lambda a: str(a.get("id"))):
        ann_id = ann.get("id")
        if ann.get("category_id") not in categories:
            raise ValueError(f"annotation {ann_id}: category_id {ann.get('category_id')!r} is not in 'categories'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"annotation {ann_id}: 'bbox' must be [x, y, width, height] in pixels")
        x, y, w, h = (_number(v, f"annotation {ann_id} bbox") for v in bbox)
        boxes.append((categories[ann["category_id"]], (x, y, x + w, y + h)))
    author = img.get("author") or img.get("annotator") or info.get("contributor") or ""
    timestamp = img.get("timestamp") or img.get("date_modified") or info.get("date_created") or ""
    return Correction(
        correction_id=record_id,
        kind="relabel",
        action="relabel",
        level="qa",
        origin=tool,
        image_id=image_id,
        image_ref=file_name if isinstance(file_name, str) else None,
        class_name=None,
        box=None,
        boxes=tuple(boxes),
        frame=frame,
        author=str(author).strip(),
        timestamp=str(timestamp).strip(),
        source_file=name,
    )


# -- Label Studio reviewed tasks ----------------------------------------------------------------------


def _parse_labelstudio(name: str, tasks: list, names: Mapping[str, str]) -> tuple[list[Correction], list[dict]]:
    from alumi_pipelines.lib.vision.labelstudio import ORIGIN, ReviewDocumentError, reviewed_boxes

    records, rejects = [], []
    for position, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            rejects.append(reject(name, None, f"task {position}", "Label Studio task is not an object with 'data'"))
            continue
        data, task_id = task["data"], task.get("id", position)
        ref = data.get("image_id") if isinstance(data.get("image_id"), str) else None
        image_id = ref.strip().lower() if ref and _SHA256.match(ref.strip().lower()) else None
        if image_id is None and isinstance(data.get("image"), str):
            stem = PurePosixPath(data["image"].split("?d=")[-1]).stem.lower()
            image_id = stem if _SHA256.match(stem) else _lookup_name(data["image"], names)
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict):
                rejects.append(reject(name, None, f"task {task_id}", "annotation is not an object"))
                continue
            updated = str(annotation.get("updated_at") or annotation.get("created_at") or "").strip()
            record_id = f"{ORIGIN}:{task.get('project', '')}:{task_id}:{annotation.get('id')}@{updated}"
            try:
                boxes, frame = reviewed_boxes(annotation, data)
            except ReviewDocumentError as exc:
                rejects.append(reject(name, None, record_id, f"Label Studio task {task_id}: {exc}"))
                continue
            author = annotation.get("completed_by")
            if isinstance(author, dict):
                author = author.get("email") or author.get("id")
            records.append(
                Correction(
                    correction_id=record_id,
                    kind="relabel",
                    action="relabel",
                    level="qa",
                    origin=ORIGIN,
                    image_id=image_id,
                    image_ref=data.get("image") if isinstance(data.get("image"), str) else None,
                    class_name=None,
                    box=None,
                    boxes=boxes,
                    frame=frame,
                    author="" if author is None else str(author).strip(),
                    timestamp=updated,
                    source_file=name,
                )
            )
    return records, rejects
