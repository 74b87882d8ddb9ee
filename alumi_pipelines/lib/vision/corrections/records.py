"""The correction record and its tables: :class:`Correction`, its vocabulary, rejects, timestamps, frames.

Every other module of the package speaks in these terms: the parsers produce :class:`Correction` records
and :func:`reject` dicts, validation rewrites records, application turns them into label rows and a
changes table (:func:`change_schema`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

ACTIONS = ("add", "remove", "replace", "relabel")
LEVELS = ("operator", "qa")  # applied in this order: the later level wins
REJECT_KEYS = ("file", "line", "record_id", "reason")
CORRECTION_SOURCE = "correction"  # the canonical ``source`` of rows written by apply

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


# -- timestamps ---------------------------------------------------------------------------------------


def parse_timestamp(value: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; a time without offset is taken as UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def canonical_timestamp(moment: datetime) -> str:
    """UTC, microseconds, 'Z' suffix: sorts as text in time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- tables -------------------------------------------------------------------------------------------

_BOX_FIELDS = ("x1", "y1", "x2", "y2")


def correction_schema() -> dict:
    """Polars schema of :func:`corrections_frame` (one row per correction)."""
    schema: dict[str, Any] = {
        "correction_id": pl.Utf8,
        "kind": pl.Utf8,
        "action": pl.Utf8,
        "level": pl.Utf8,
        "origin": pl.Utf8,
        "image_id": pl.Utf8,
        "image_ref": pl.Utf8,
        "class_name": pl.Utf8,
    }
    schema.update({k: pl.Float64 for k in _BOX_FIELDS})
    schema.update({f"match_{k}": pl.Float64 for k in _BOX_FIELDS})
    schema.update(
        {
            "boxes": pl.Utf8,
            "author": pl.Utf8,
            "timestamp": pl.Utf8,
            "source_file": pl.Utf8,
            "line": pl.Int64,
            "image_width": pl.Int64,
            "image_height": pl.Int64,
            "batch": pl.Utf8,
        }
    )
    return schema


def corrections_frame(records: Sequence[Correction]) -> pl.DataFrame:
    """Corrections as a table (relabel boxes as JSON), e.g. for corrections/validated/."""
    rows = []
    for r in records:
        box = r.box or (None,) * 4
        match = r.match_box or (None,) * 4
        rows.append(
            {
                "correction_id": r.correction_id,
                "kind": r.kind,
                "action": r.action,
                "level": r.level,
                "origin": r.origin,
                "image_id": r.image_id,
                "image_ref": r.image_ref,
                "class_name": r.class_name,
                **dict(zip(_BOX_FIELDS, box)),
                **{f"match_{k}": v for k, v in zip(_BOX_FIELDS, match)},
                "boxes": json.dumps([[name, list(b)] for name, b in r.boxes]) if r.action == "relabel" else None,
                "author": r.author,
                "timestamp": r.timestamp,
                "source_file": r.source_file,
                "line": r.line,
                "image_width": r.image_width,
                "image_height": r.image_height,
                "batch": r.batch,
            }
        )
    return pl.DataFrame(rows, schema=correction_schema(), orient="row")


def corrections_from_frame(frame: pl.DataFrame) -> list[Correction]:
    """The inverse of :func:`corrections_frame`."""
    out = []
    for row in frame.iter_rows(named=True):
        box = tuple(row[k] for k in _BOX_FIELDS)
        match = tuple(row[f"match_{k}"] for k in _BOX_FIELDS)
        boxes = tuple((name, tuple(b)) for name, b in json.loads(row["boxes"])) if row["boxes"] else ()
        out.append(
            Correction(
                correction_id=row["correction_id"],
                kind=row["kind"],
                action=row["action"],
                level=row["level"],
                origin=row["origin"],
                image_id=row["image_id"],
                image_ref=row["image_ref"],
                class_name=row["class_name"],
                box=None if box[0] is None else box,
                match_box=None if match[0] is None else match,
                boxes=boxes,
                author=row["author"],
                timestamp=row["timestamp"],
                source_file=row["source_file"],
                line=row["line"],
                image_width=row["image_width"],
                image_height=row["image_height"],
                batch=row["batch"],
            )
        )
    return out


def rejects_frame(rejects: Sequence[dict]) -> pl.DataFrame:
    """Rejects as a table (file, line, record_id, reason)."""
    schema = {"file": pl.Utf8, "line": pl.Int64, "record_id": pl.Utf8, "reason": pl.Utf8}
    return pl.DataFrame([{k: r.get(k) for k in REJECT_KEYS} for r in rejects], schema=schema, orient="row")


def change_schema() -> dict:
    """Polars schema of the changes table returned by :func:`apply`."""
    names = (
        "correction_id",
        "image_id",
        "action",
        "kind",
        "author",
        "origin",
        "level",
        "timestamp",
        "before",
        "after",
        "result",
        "source_file",
    )
    return {"order": pl.Int64, **{n: pl.Utf8 for n in names}}
