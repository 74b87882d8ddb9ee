"""Landing batch → raw records: validate the batch marker, parse annotations, probe every image,
content-address the good ones and collect every rejection with its reason.

An image any of whose annotation records was rejected (a box with NaN coordinates or far outside the image,
an unknown class, an unreadable annotation file) is *held out*: its manifest row carries the reason in
``held_out`` and ``labelled`` false (like an unlabelled frame, it waits for a correction), a ``held_out``
rejection row lists it, and gold leaves it out until a correction labels it. Its remaining boxes are kept in raw
labels for the reviewer. Only an annotation that was read in full and says
"no boxes" (an empty YOLO file, a VOC file without objects, a LabelMe file without shapes) makes a defect-free
example.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.lib.vision import formats, imaging
from alumi_pipelines.lib.vision.formats import BATCH_MARKER
from alumi_pipelines.lib.vision.labels import ClassMap

BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ANNOTATION_SUFFIXES = (".txt", ".xml", ".json", ".yaml", ".yml", ".csv")

MANIFEST_COLUMNS = (
    "image_id",
    "batch",
    "source_path",
    "format",
    "width",
    "height",
    "channels",
    "bytes",
    "labelled",
    "annotation_path",
    "line_id",
    "camera_id",
    "captured_at",
    "held_out",  # why the image is held out of gold (rejected annotation records), "" when it is not
)
REJECTION_COLUMNS = ("batch", "path", "stage", "reason")


class BatchError(ValueError):
    """The batch as a whole cannot be ingested (bad marker); names the file and the rule."""


@dataclass
class IngestResult:
    manifest: list[dict] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def held_out(self) -> list[dict]:
        """Manifest rows of the images held out of gold because annotation records of theirs were rejected."""
        return [row for row in self.manifest if row["held_out"]]


def check_batch_id(batch_id: str) -> str:
    if not BATCH_ID.match(batch_id or ""):
        raise BatchError(f"batch id {batch_id!r}: must match {BATCH_ID.pattern}")
    return batch_id


def read_marker(where: str, raw: bytes) -> dict:
    """Parse and validate ``_batch.json``; ``where`` names the file in error messages."""
    try:
        marker = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(marker, dict):
        raise BatchError(f"{where}: must be a JSON object")
    fmt = marker.get("format")
    if fmt not in formats.FORMATS:
        raise BatchError(f"{where}: field 'format' is {fmt!r}, expected one of {', '.join(formats.FORMATS)}")
    classes = marker.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise BatchError(f"{where}: field 'classes' must be a list of names or null")
    return marker


def ingest_batch(
    batch_id: str,
    marker: dict,
    files: Sequence[str],
    read: Callable[[str], bytes],
    class_map: ClassMap,
    *,
    min_side: int,
    store: Callable[[str, str, bytes], None],
    workers: int = 0,
    chunk: int = 16,
    limits: imaging.Limits | None = None,
) -> IngestResult:
    """Parse, probe and store one batch; ``store(image_id, ext, data)`` persists a good image. Images go to
    ``workers`` threads ``chunk`` at a time (1 when ``read`` waits on a network).

    An image whose header declares more than ``limits`` allow is quarantined without being decoded.
    """
    result = IngestResult()
    files = sorted(f for f in files if f != BATCH_MARKER)
    for path in files:
        suffix = PurePosixPath(path).suffix.lower()
        if suffix not in formats.IMAGE_SUFFIXES and suffix not in ANNOTATION_SUFFIXES:
            result.rejections.append(_reject(batch_id, path, "file", f"unsupported file type {suffix or '(none)'!r}"))

    parsed = formats.parse_batch(marker["format"], files, read, marker.get("classes"))
    class_map = formats.source_class_map(class_map, parsed.class_names)
    result.notes.extend(parsed.notes)
    result.rejections.extend(_reject(batch_id, r.path, "annotation", r.reason) for r in parsed.rejections)
    images = sorted(parsed.images, key=lambda im: im.image_path)

    def probe(image: formats.AnnotatedImage):
        data = read(image.image_path)
        try:
            info = imaging.probe(data, limits)
        except imaging.ImageRejected as exc:
            return image, data, None, str(exc)
        if min(info.width, info.height) < min_side:
            return image, data, info, f"image {info.width}x{info.height} is smaller than the minimum side {min_side}"
        return image, data, info, None

    for image, data, info, problem in imaging.parallel_map(probe, images, workers, chunk=chunk):
        if problem is not None:
            result.rejections.append(_reject(batch_id, image.image_path, "image", problem))
            continue
        image_id = sha256_hex(data)
        ext = ".jpg" if info.format == "jpeg" else f".{info.format}"
        store(image_id, ext, data)
        extra = image.extra or {}
        rows, rejections, notes = formats.to_canonical_rows(
            image,
            info.width,
            info.height,
            info.channels,
            class_map,
            image_id=image_id,
            source=marker["format"],
            batch=batch_id,
        )
        problems = [*image.problems, *(r.reason for r in rejections)]
        held_out = held_out_reason(image.annotation_path or image.image_path, problems)
        result.manifest.append(
            {
                "image_id": image_id,
                "batch": batch_id,
                "source_path": image.image_path,
                "format": info.format,
                "width": info.width,
                "height": info.height,
                "channels": info.channels,
                "bytes": len(data),
                "labelled": bool(image.labelled) and not held_out,  # held out: unlabelled until reviewed
                "annotation_path": image.annotation_path or "",
                "line_id": str(extra.get("line_id") or ""),
                "camera_id": str(extra.get("camera_id") or ""),
                "captured_at": str(extra.get("captured_at") or ""),
                "held_out": held_out,
            }
        )
        result.labels.extend(rows)
        result.rejections.extend(_reject(batch_id, r.path, "label", r.reason) for r in rejections)
        if held_out:
            result.rejections.append(_reject(batch_id, image.image_path, "held_out", held_out))
        result.notes.extend(notes)
    if result.held_out:
        result.notes.append(
            f"{len(result.held_out)} images held out of gold: annotation records of theirs were rejected"
        )
    return result


def held_out_reason(annotation: str, problems: Sequence[str], limit: int = 3) -> str:
    """Why an image is held out of gold ("" when ``problems`` is empty): its rejected records, named."""
    if not problems:
        return ""
    shown = "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
    count = f"{len(problems)} rejected annotation record" + ("s" if len(problems) != 1 else "")
    return f"held out of gold, not a defect-free example: {annotation} has {count} ({shown})"


def _reject(batch: str, path: str, stage: str, reason: str) -> dict:
    return {"batch": batch, "path": path, "stage": stage, "reason": reason}
