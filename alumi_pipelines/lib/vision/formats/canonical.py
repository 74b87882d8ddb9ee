"""From a parsed image to rows of the canonical label table: classes resolved, boxes normalised and checked."""

from __future__ import annotations

from collections.abc import Sequence

from alumi_pipelines.lib.vision.formats.model import EDGE_TOLERANCE, SUBPIXEL, AnnotatedImage, Rejection
from alumi_pipelines.lib.vision.labels import ClassMap, UnknownClassError


def source_class_map(class_map: ClassMap, class_names: Sequence[str] | None) -> ClassMap:
    """The class map to resolve a parse result's boxes with: YOLO ids aliased through its names."""
    return class_map.with_id_aliases(class_names) if class_names else class_map


def to_canonical_rows(
    image: AnnotatedImage,
    width: int,
    height: int,
    channels: int,
    class_map: ClassMap,
    *,
    image_id: str,
    source: str,
    batch: str,
) -> tuple[list[dict], list[Rejection], list[str]]:
    """Canonical label rows of one image, normalised by its real size; bad boxes become rejections."""
    if width <= 0 or height <= 0:
        raise ValueError(f"{image.image_path}: real image size must be positive, got {width}x{height}")
    rows: list[dict] = []
    rejections: list[Rejection] = []
    notes: list[str] = []
    where = image.annotation_path or image.image_path
    declared = (image.declared_width, image.declared_height)
    if None not in declared and declared != (width, height):
        swapped = " (width and height swapped: EXIF rotation?)" if declared == (height, width) else ""
        notes.append(
            f"{where}: declares {declared[0]}x{declared[1]} for {image.image_path}, the image is "
            f"{width}x{height}; boxes are normalised by the image's size{swapped}"
        )
    if image.declared_channels is not None and image.declared_channels != channels:
        notes.append(
            f"{where}: declares {image.declared_channels} channels for {image.image_path}, "
            f"the image has {channels}; using the image's"
        )
    seen: set[tuple] = set()
    for number, box in enumerate(image.boxes, 1):
        label = box.origin or f"box {number}"
        try:
            class_name, class_id = class_map.resolve(box.class_name)
        except UnknownClassError as exc:
            rejections.append(Rejection(where, f"{label}: {exc.args[0]}"))
            continue
        x1, y1, x2, y2 = box.x1, box.y1, box.x2, box.y2
        if not box.normalised:
            x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height
        if not (x2 > x1 and y2 > y1):
            rejections.append(Rejection(where, f"{label}: zero or negative box size"))
            continue
        over_x = max(0.0, -x1, x2 - 1.0)
        over_y = max(0.0, -y1, y2 - 1.0)
        if max(over_x, over_y) > EDGE_TOLERANCE:
            hint = ""
            if box.normalised and max(abs(box.x1), abs(box.y1), abs(box.x2), abs(box.y2)) > 2:
                hint = "; coordinates must be fractions of the image, these look like pixels"
            rejections.append(
                Rejection(
                    where,
                    f"{label}: box extends {100 * max(over_x, over_y):.1f}% of the image outside it "
                    f"(limit {100 * EDGE_TOLERANCE:g}%){hint}",
                )
            )
            continue
        over_px = max(over_x * width, over_y * height)
        if over_px > 0:
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
            if not (x2 > x1 and y2 > y1):
                rejections.append(
                    Rejection(where, f"{label}: box lies outside the image (nothing left after clipping)")
                )
                continue
            if over_px >= SUBPIXEL:
                notes.append(f"{where}: {label}: box clipped to the image (it extended {over_px:.1f} px outside)")
        key = (class_id, round(x1, 6), round(y1, 6), round(x2, 6), round(y2, 6))
        if key in seen:
            notes.append(f"{where}: {label}: exact duplicate of an earlier {class_name} box, dropped")
            continue
        seen.add(key)
        rows.append(
            {
                "image_id": image_id,
                "class_name": class_name,
                "class_id": class_id,
                "x_center": (x1 + x2) / 2,
                "y_center": (y1 + y2) / 2,
                "width": x2 - x1,
                "height": y2 - y1,
                "source": source,
                "source_file": image.annotation_path,
                "batch": batch,
            }
        )
    return rows, rejections, notes
