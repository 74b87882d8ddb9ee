"""Label corrections from edge operators and QA: parse, validate, apply to the canonical labels.

Accepted inputs (files in ``corrections/incoming/``, dispatched on the file suffix):

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
rejected otherwise. The correction id is ``<file name>#<COCO image id>`` unless the image carries
``correction_id``.

``*.csv`` — a QA table with columns correction_id, image_id, action (add | remove | replace), class_name,
x1, y1, x2, y2 (pixels of the original image), author, timestamp, tool.

Edge kinds map to actions: missed_defect → add, false_positive → remove, corrected_box → replace.

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

import csv
import dataclasses
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

import polars as pl

from alumi_pipelines.lib.labels import ClassMap, UnknownClassError, label_schema

ACTIONS = ("add", "remove", "replace", "relabel")
LEVELS = ("operator", "qa")  # applied in this order: the later level wins
EDGE_KINDS = {"missed_defect": "add", "false_positive": "remove", "corrected_box": "replace"}
CSV_COLUMNS = ("correction_id", "image_id", "action", "class_name", "x1", "y1", "x2", "y2", "author", "timestamp", "tool")
REJECT_KEYS = ("file", "line", "record_id", "reason")
CORRECTION_SOURCE = "correction"  # the canonical ``source`` of rows written by apply

REMOVE_MIN_IOU = 0.5
REPLACE_MIN_IOU = 0.1
BOX_TOLERANCE_PX = 0.5  # a box edge up to this far outside the image is clamped (UI rounding), beyond is rejected
ASPECT_TOLERANCE = 0.01  # COCO frame vs original aspect ratio, relative
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True)
class Correction:
    """One correction as parsed from an incoming file; :func:`validate` fills the image fields."""

    correction_id: str
    kind: str  # as given: false_positive | missed_defect | corrected_box | add | remove | replace | relabel
    action: str  # add | remove | replace | relabel
    level: str  # operator | qa
    origin: str  # edge device id, or the QA tool
    image_id: str | None
    class_name: str | None
    box: Box | None
    author: str
    timestamp: str  # as given; validate() rewrites it as canonical UTC ("...Z")
    source_file: str
    line: int | None = None  # 1-based line (JSONL) or row line (CSV) in source_file
    image_ref: str | None = None
    match_box: Box | None = None  # replace: the box to look for, when not the new box itself
    boxes: tuple[tuple[str, Box], ...] = ()  # relabel: (class_name, box) pairs
    frame: tuple[int, int] | None = None  # (width, height) the boxes are measured in, when not the original
    image_width: int | None = None
    image_height: int | None = None
    batch: str | None = None

    def content(self) -> tuple:
        """What the correction says, without where it was read from (for duplicate-id checks)."""
        skip = {"source_file", "line", "image_width", "image_height", "batch"}
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip)


def reject(file: str, line: int | None, record_id: str | None, reason: str) -> dict:
    return {"file": file, "line": line, "record_id": record_id, "reason": reason}


# -- parsing ------------------------------------------------------------------------------------------


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


def _parse_coco(name: str, text: str, names: Mapping[str, str]) -> tuple[list[Correction], list[dict]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [reject(name, exc.lineno, None, f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")]
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
            rejects.append(reject(name, None, f"annotation {ann_id if ann_id is not None else position}",
                                  f"annotation refers to COCO image id {target!r}, which is not in 'images'"))
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


# -- validation ---------------------------------------------------------------------------------------


def parse_timestamp(value: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; a time without offset is taken as UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def canonical_timestamp(moment: datetime) -> str:
    """UTC, microseconds, 'Z' suffix: sorts as text in time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _class_map(classes: ClassMap | Iterable[str]) -> ClassMap:
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
) -> tuple[list[Correction], list[dict]]:
    """Keep the corrections that can be applied; reject the rest with the rule each one broke.

    ``images`` holds image_id, orig_width, orig_height (and batch, when known). Valid corrections come
    back with canonical class names, canonical UTC timestamps, boxes in original pixels and the image's
    size and batch filled in. Identical repeats of an id are kept once; an id repeated with different
    content rejects the later record.
    """
    cmap = _class_map(classes)
    known = _image_table(images)
    limit = (now or datetime.now(timezone.utc)).astimezone(timezone.utc) + max_clock_skew
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
        checked, reason = _validate_one(rec, known, cmap, limit)
        if reason:
            rejects.append(reject(rec.source_file, rec.line, rec.correction_id, reason))
        else:
            valid.append(checked)
    return valid, rejects


def _validate_one(rec: Correction, known, cmap: ClassMap, limit: datetime) -> tuple[Correction | None, str | None]:
    if rec.action not in ACTIONS:
        return None, f"action {rec.action!r} is not one of {', '.join(ACTIONS)}"
    if rec.level not in LEVELS:
        return None, f"level {rec.level!r} is not one of {', '.join(LEVELS)}"
    if rec.image_id is None:
        return None, f"unknown image: image reference {rec.image_ref!r} does not resolve to an image id"
    if rec.image_id not in known:
        return None, f"unknown image: {rec.image_id!r} is not in the lake"
    width, height, batch = known[rec.image_id]
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
        rec, **updates, frame=None, timestamp=canonical_timestamp(moment),
        image_width=width, image_height=height, batch=batch,
    ), None


# -- tables -------------------------------------------------------------------------------------------

_BOX_FIELDS = ("x1", "y1", "x2", "y2")


def correction_schema() -> dict:
    """Polars schema of :func:`corrections_frame` (one row per correction)."""
    schema: dict[str, Any] = {
        "correction_id": pl.Utf8, "kind": pl.Utf8, "action": pl.Utf8, "level": pl.Utf8, "origin": pl.Utf8,
        "image_id": pl.Utf8, "image_ref": pl.Utf8, "class_name": pl.Utf8,
    }
    schema.update({k: pl.Float64 for k in _BOX_FIELDS})
    schema.update({f"match_{k}": pl.Float64 for k in _BOX_FIELDS})
    schema.update({
        "boxes": pl.Utf8, "author": pl.Utf8, "timestamp": pl.Utf8, "source_file": pl.Utf8, "line": pl.Int64,
        "image_width": pl.Int64, "image_height": pl.Int64, "batch": pl.Utf8,
    })
    return schema


def corrections_frame(records: Sequence[Correction]) -> pl.DataFrame:
    """Corrections as a table (relabel boxes as JSON), e.g. for corrections/validated/."""
    rows = []
    for r in records:
        box = r.box or (None,) * 4
        match = r.match_box or (None,) * 4
        rows.append({
            "correction_id": r.correction_id, "kind": r.kind, "action": r.action, "level": r.level,
            "origin": r.origin, "image_id": r.image_id, "image_ref": r.image_ref, "class_name": r.class_name,
            **dict(zip(_BOX_FIELDS, box)), **{f"match_{k}": v for k, v in zip(_BOX_FIELDS, match)},
            "boxes": json.dumps([[name, list(b)] for name, b in r.boxes]) if r.action == "relabel" else None,
            "author": r.author, "timestamp": r.timestamp, "source_file": r.source_file, "line": r.line,
            "image_width": r.image_width, "image_height": r.image_height, "batch": r.batch,
        })
    return pl.DataFrame(rows, schema=correction_schema(), orient="row")


def corrections_from_frame(frame: pl.DataFrame) -> list[Correction]:
    """The inverse of :func:`corrections_frame`."""
    out = []
    for row in frame.iter_rows(named=True):
        box = tuple(row[k] for k in _BOX_FIELDS)
        match = tuple(row[f"match_{k}"] for k in _BOX_FIELDS)
        boxes = tuple((name, tuple(b)) for name, b in json.loads(row["boxes"])) if row["boxes"] else ()
        out.append(Correction(
            correction_id=row["correction_id"], kind=row["kind"], action=row["action"], level=row["level"],
            origin=row["origin"], image_id=row["image_id"], image_ref=row["image_ref"], class_name=row["class_name"],
            box=None if box[0] is None else box, match_box=None if match[0] is None else match,
            boxes=boxes, author=row["author"], timestamp=row["timestamp"], source_file=row["source_file"],
            line=row["line"], image_width=row["image_width"], image_height=row["image_height"], batch=row["batch"],
        ))
    return out


def rejects_frame(rejects: Sequence[dict]) -> pl.DataFrame:
    """Rejects as a table (file, line, record_id, reason)."""
    schema = {"file": pl.Utf8, "line": pl.Int64, "record_id": pl.Utf8, "reason": pl.Utf8}
    return pl.DataFrame([{k: r.get(k) for k in REJECT_KEYS} for r in rejects], schema=schema, orient="row")


def change_schema() -> dict:
    """Polars schema of the changes table returned by :func:`apply`."""
    names = ("correction_id", "image_id", "action", "kind", "author", "origin", "level", "timestamp",
             "before", "after", "result", "source_file")
    return {"order": pl.Int64, **{n: pl.Utf8 for n in names}}


# -- applying -----------------------------------------------------------------------------------------

_LabelBox = tuple[int, str, float, float, float, float]  # class_id, class_name, x_center, y_center, width, height


def _iou(a: _LabelBox, b: _LabelBox) -> float:
    ax1, ay1, ax2, ay2 = a[2] - a[4] / 2, a[3] - a[5] / 2, a[2] + a[4] / 2, a[3] + a[5] / 2
    bx1, by1, bx2, by2 = b[2] - b[4] / 2, b[3] - b[5] / 2, b[2] + b[4] / 2, b[3] + b[5] / 2
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[4] * a[5] + b[4] * b[5] - inter)


def _normalise(class_name: str, box: Box, width: int, height: int, cmap: ClassMap) -> _LabelBox:
    name, class_id = cmap.resolve(class_name)
    x1, y1, x2, y2 = box
    return (class_id, name, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)


def _box_json(box: _LabelBox | None) -> dict | None:
    if box is None:
        return None
    return {"class_name": box[1], "x_center": round(box[2], 6), "y_center": round(box[3], 6),
            "width": round(box[4], 6), "height": round(box[5], 6)}


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _best_match(state: list[_LabelBox], target: _LabelBox, min_iou: float, same_class: bool) -> int | None:
    best, best_iou = None, min_iou
    for index, box in enumerate(state):
        if same_class and box[0] != target[0]:
            continue
        iou = _iou(box, target)
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
            raise ValueError(f"correction id {rec.correction_id!r} appears with different content: run validate() first")
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
    cmap = _class_map(classes)
    records = corrections_from_frame(valid) if isinstance(valid, pl.DataFrame) else list(valid)
    if labels.height and (labels["source"] == CORRECTION_SOURCE).any():
        raise ValueError(
            "labels already contain corrected rows (source='correction'): apply corrections to the processed labels"
        )
    records = _dedupe(records)
    for rec in records:
        if rec.image_width is None or rec.image_height is None or rec.image_id is None:
            raise ValueError(f"correction {rec.correction_id!r} has no image size: pass records through validate() first")
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
        changes.append({
            "order": order, "correction_id": rec.correction_id, "image_id": image_id, "action": rec.action,
            "kind": rec.kind, "author": rec.author, "origin": rec.origin, "level": rec.level,
            "timestamp": rec.timestamp, "before": _dump(before), "after": _dump(after), "result": result,
            "source_file": rec.source_file,
        })

    overlay_rows = [
        {"image_id": image_id, "class_name": name, "class_id": class_id, "x_center": x, "y_center": y,
         "width": w, "height": h, "source": CORRECTION_SOURCE, "source_file": last_applied[image_id],
         "batch": batch_of[image_id]}
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
