"""Native "alumi" sidecars: ``<line_id>/<camera_id>/<stem>.png`` + ``<stem>.json`` with normalised boxes.

A sidecar names its image and carries ``line_id``, ``camera_id``, ``captured_at``, ``width``, ``height`` and
``boxes`` (``class_name``, ``x_center``, ``y_center``, ``width``, ``height`` as fractions of the image).

``"labelled": false`` (the frames an edge device keeps and uploads) says the sidecar labels nothing: the
image enters as unlabelled, like an image without a sidecar, so it is neither a defect-free negative nor
trained on until a correction labels it; its ``boxes`` are ignored. Without the field a sidecar is labelled,
and an empty ``boxes`` list then claims the image is defect-free. Fields this parser does not read (an edge
device's ``predictions``, ``model_version``, ``device``, ``capture_reasons``, ``detection_id``) are accepted
and ignored: the model's own predictions never become labels.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath

from alumi_pipelines.lib.vision.formats.model import SourceBox
from alumi_pipelines.lib.vision.formats.pairing import Batch, Record
from alumi_pipelines.lib.vision.formats.values import finite_number, positive_int


def _folder_extra(path: str) -> dict:
    parts = PurePosixPath(path).parts
    return {"line_id": parts[-3], "camera_id": parts[-2]} if len(parts) == 3 else {}


def parse_alumi(batch: Batch, class_names: list[str] | None) -> None:
    batch.default_extra = _folder_extra
    for path in batch.with_suffix(".json"):
        batch.claim(path)
        doc = batch.read_json(path)
        if doc is None:
            batch.hold_out_unreadable(path)
            continue
        record, problem = _alumi_sidecar(batch, path, doc)
        if problem:
            batch.reject(path, problem)
            batch.hold_out_unreadable(path)
        elif record is not None:
            batch.add(record)


def _alumi_sidecar(batch: Batch, path: str, doc: object) -> tuple[Record | None, str | None]:
    if not isinstance(doc, dict):
        return None, "sidecar is not a JSON object"
    for key in ("image", "line_id", "camera_id", "captured_at"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            return None, f"field '{key}' must be a non-empty string"
    width, height = positive_int(doc.get("width")), positive_int(doc.get("height"))
    if width is None or height is None:
        return None, (
            f"fields 'width' and 'height' must be positive integers, got {doc.get('width')!r}x{doc.get('height')!r}"
        )
    labelled = doc.get("labelled", True)
    if not isinstance(labelled, bool):
        return None, f"field 'labelled' must be true or false, got {labelled!r}"
    if labelled and not isinstance(doc.get("boxes"), list):
        return None, "field 'boxes' must be a list"
    try:
        captured = datetime.fromisoformat(doc["captured_at"].replace("Z", "+00:00"))
    except ValueError:
        return None, f"field 'captured_at' {doc['captured_at']!r} is not an ISO-8601 timestamp"
    if captured.tzinfo is None:
        batch.notes.append(f"{path}: captured_at {doc['captured_at']!r} has no time zone; taken as UTC")
        captured = captured.replace(tzinfo=UTC)
    folder = _folder_extra(path)
    for key in ("line_id", "camera_id"):
        if folder and folder[key] != doc[key]:
            return None, f"field '{key}' is {doc[key]!r} but the sidecar lies in folder {folder[key]!r}"
    image, reason, note = batch.pair_by_name(doc["image"], path, relative_to_annotation=True, fallback=False)
    if image is None:
        return None, reason
    if note:
        batch.notes.append(note)
    boxes: list[SourceBox] = []
    if not labelled:
        ignored = doc.get("boxes")
        if ignored:
            count = f"{len(ignored)} boxes" if isinstance(ignored, list) else "field 'boxes'"
            batch.notes.append(f"{path}: labelled is false; its {count} ignored, {image} kept unlabelled")
    else:
        for number, entry in enumerate(doc["boxes"], 1):
            box, problem = _alumi_box(entry, f"box {number}")
            if problem:
                batch.reject(path, problem)
            else:
                boxes.append(box)
    extra = {
        "line_id": doc["line_id"],
        "camera_id": doc["camera_id"],
        "captured_at": captured.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    return Record(path, image, boxes, path, width, height, extra=extra, labelled=labelled), None


def _alumi_box(entry: object, origin: str) -> tuple[SourceBox | None, str | None]:
    if not isinstance(entry, dict):
        return None, f"{origin}: not an object"
    name = entry.get("class_name")
    if not isinstance(name, str) or not name.strip():
        return None, f"{origin}: missing 'class_name'"
    origin = f"{origin} ({name.strip()})"
    values = []
    for key in ("x_center", "y_center", "width", "height"):
        value = finite_number(entry.get(key))
        if value is None:
            return None, f"{origin}: '{key}' is {entry.get(key)!r}, not a finite number"
        values.append(value)
    xc, yc, w, h = values
    if w <= 0 or h <= 0:
        return None, f"{origin}: zero or negative box size (width {w:g}, height {h:g})"
    return SourceBox(name.strip(), xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2, True, origin), None
