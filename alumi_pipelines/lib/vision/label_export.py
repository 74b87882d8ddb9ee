"""Gold labels as the documents labelling tools import: COCO JSON, YOLO, Label Studio tasks and config.

Pure conversion: the gold manifest (image_id, split, file, label_file, width, height: the pixel size of the
gold image, which is the processed image) and the canonical label table (normalised centre/size boxes) in,
JSON-ready documents out. No lake, no files; ``assets/gold.py`` reads the tables and writes the folder.

Every document is deterministic (images in split order then by id, boxes in a fixed order), so exporting
the same dataset twice gives the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import polars as pl

from alumi_pipelines.lib.boxes import corners
from alumi_pipelines.lib.vision.splits import SPLITS

EXPORT_FORMATS = ("coco", "yolo", "labelstudio")
IMAGE_MODES = ("copy", "none")

COCO_FILE = "annotations.json"
LABEL_STUDIO_TASKS = "tasks.json"
LABEL_STUDIO_CONFIG = "config.xml"
DATA_YAML = "data.yaml"
EXPORT_RECORD = "alumi_export.json"  # what was exported (dataset, format, splits, counts); marks an export folder

LOCAL_FILES_URL = "/data/local-files/?d="  # Label Studio serves these from LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
LS_FROM_NAME = "label"  # the RectangleLabels control of the config
LS_TO_NAME = "image"  # the Image object of the config (and the task data key it reads, $image)

_DIGITS = 6  # decimals kept for pixel and percent coordinates (the gold labels keep 6 normalised decimals)
_HASH = re.compile(r"^[0-9a-f]{8,64}$")


class LabelExportError(ValueError):
    """Bad input for an export: the message names the problem and the fix, on one line."""


# -- input checks ----------------------------------------------------------------------------------
def check_format(fmt: str | None) -> str:
    if fmt not in EXPORT_FORMATS:
        raise LabelExportError(f"unknown format {fmt!r}: use --format {' | '.join(EXPORT_FORMATS)}")
    return fmt


def check_image_mode(mode: str | None) -> str:
    if mode not in IMAGE_MODES:
        raise LabelExportError(f"unknown image mode {mode!r}: use --images {' | '.join(IMAGE_MODES)}")
    return mode


def check_splits(splits: Iterable[str] | None) -> tuple[str, ...]:
    """The chosen splits in dataset order (train, val, test); every split when none is given."""
    chosen = list(splits or SPLITS)
    unknown = sorted(set(chosen) - set(SPLITS))
    if unknown:
        raise LabelExportError(f"unknown split {', '.join(map(repr, unknown))}: use --split {' | '.join(SPLITS)}")
    return tuple(s for s in SPLITS if s in chosen)


def check_dataset_hash(value: str) -> str:
    """A gold dataset's content hash (hex digits, as in gold/current.json's ``dataset_hash``)."""
    if not isinstance(value, str) or not _HASH.match(value):
        raise LabelExportError(
            f"--dataset {value!r} is not a dataset content hash: give the hex 'dataset_hash' of a gold dataset "
            "(gold/current.json or the gold_dataset asset's metadata)"
        )
    return value


def class_names(data_yaml: Mapping) -> list[str]:
    """The class names of a YOLO ``data.yaml`` in id order (``names`` as a list or an id → name mapping)."""
    names = data_yaml.get("names") if isinstance(data_yaml, Mapping) else None
    if isinstance(names, Mapping):
        ids = sorted(names, key=int)
        if [int(i) for i in ids] != list(range(len(ids))):
            raise LabelExportError(f"data.yaml names {dict(names)}: class ids must be 0..n-1; rebuild the gold dataset")
        names = [names[i] for i in ids]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise LabelExportError("data.yaml has no class 'names': rebuild the gold dataset (materialise gold_dataset)")
    return list(names)


# -- the tables ------------------------------------------------------------------------------------
def _require_columns(table: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise LabelExportError(f"the gold {what} has no column {', '.join(missing)}: rebuild the gold dataset")


def export_images(manifest: pl.DataFrame, splits: Sequence[str] = SPLITS) -> pl.DataFrame:
    """The manifest rows of ``splits``: image_id, split, file, label_file, width, height, in export order.

    Export order is split order (train, val, test), then image_id. ``width``/``height`` are the pixel size
    of the gold image; an image without a positive size cannot be exported.
    """
    _require_columns(manifest, ("image_id", "split", "file", "label_file", "width", "height"), "manifest")
    order = {s: i for i, s in enumerate(SPLITS)}
    images = (
        manifest.filter(pl.col("split").is_in(list(splits)))
        .select("image_id", "split", "file", "label_file", pl.col("width", "height").cast(pl.Int64))
        .sort(pl.col("split").replace_strict(order, default=len(order)), "image_id")
    )
    sizeless = images.filter(
        pl.col("width").is_null() | pl.col("height").is_null() | (pl.col("width") <= 0) | (pl.col("height") <= 0)
    )
    if not sizeless.is_empty():
        raise LabelExportError(
            f"{sizeless.height} gold image(s) without a pixel size (e.g. {sizeless['image_id'][0][:12]}): "
            "rebuild the gold dataset"
        )
    duplicated = images.filter(pl.col("image_id").is_duplicated())
    if not duplicated.is_empty():
        raise LabelExportError(
            f"image {duplicated['image_id'][0][:12]} is listed more than once in the gold manifest: "
            "rebuild the gold dataset"
        )
    return images


def export_labels(labels: pl.DataFrame, images: pl.DataFrame, classes: Sequence[str]) -> pl.DataFrame:
    """The boxes of ``images`` (the canonical label table's rows), checked against the class map, in box order."""
    _require_columns(labels, ("image_id", "class_id", "x_center", "y_center", "width", "height"), "labels")
    boxes = labels.filter(pl.col("image_id").is_in(images["image_id"].implode())).select(
        "image_id",
        pl.col("class_id").cast(pl.Int64),
        *[pl.col(c).cast(pl.Float64) for c in ("x_center", "y_center", "width", "height")],
        *(["class_name"] if "class_name" in labels.columns else []),
    )
    outside = boxes.filter((pl.col("class_id") < 0) | (pl.col("class_id") >= len(classes)))
    if not outside.is_empty():
        raise LabelExportError(
            f"{outside.height} gold box(es) with class id {outside['class_id'][0]} outside the class map "
            f"{list(classes)}: rebuild the gold dataset"
        )
    if "class_name" in boxes.columns:
        expected = pl.col("class_id").replace_strict(dict(enumerate(classes)), return_dtype=pl.Utf8)
        wrong = boxes.filter(pl.col("class_name") != expected)
        if not wrong.is_empty():
            row = wrong.row(0, named=True)
            raise LabelExportError(
                f"gold box of {row['image_id'][:12]} names class {row['class_name']!r} but id {row['class_id']} "
                f"is {classes[row['class_id']]!r} in data.yaml: rebuild the gold dataset"
            )
        boxes = boxes.drop("class_name")
    return boxes.sort("image_id", "class_id", "x_center", "y_center", "width", "height")


def boxes_by_image(labels: pl.DataFrame) -> dict[str, list[tuple[int, float, float, float, float]]]:
    """image_id → [(class_id, x_center, y_center, width, height), ...] in the table's order."""
    out: dict[str, list[tuple[int, float, float, float, float]]] = {}
    for image_id, class_id, x, y, w, h in labels.select(
        "image_id", "class_id", "x_center", "y_center", "width", "height"
    ).iter_rows():
        out.setdefault(image_id, []).append((class_id, x, y, w, h))
    return out


# -- geometry --------------------------------------------------------------------------------------
def pixel_box(
    x_center: float, y_center: float, width: float, height: float, image_width: int, image_height: int
) -> tuple[float, float, float, float]:
    """A normalised centre/size box as COCO's ``[x, y, w, h]`` in pixels (top-left corner and size)."""
    x1, y1, _, _ = corners((x_center, y_center, width, height))
    return (
        round(x1 * image_width, _DIGITS),
        round(y1 * image_height, _DIGITS),
        round(width * image_width, _DIGITS),
        round(height * image_height, _DIGITS),
    )


def percent_box(x_center: float, y_center: float, width: float, height: float) -> tuple[float, float, float, float]:
    """A normalised centre/size box as Label Studio's ``x, y, width, height`` in percent of the image."""
    x1, y1, _, _ = corners((x_center, y_center, width, height))
    return tuple(round(v * 100, _DIGITS) for v in (x1, y1, width, height))


# -- documents -------------------------------------------------------------------------------------
def coco_document(images: pl.DataFrame, labels: pl.DataFrame, classes: Sequence[str], dataset_hash: str) -> dict:
    """One COCO detection document: images (ids 1..n), categories (ids 1..n in class-id order), annotations.

    ``file_name`` is the image's path relative to the folder holding the document (``images/<split>/...``).
    """
    boxes = boxes_by_image(labels)
    coco_images, annotations = [], []
    for number, (image_id, _split, file, _label_file, width, height) in enumerate(images.iter_rows(), start=1):
        coco_images.append({"id": number, "file_name": file, "width": width, "height": height})
        for class_id, x, y, w, h in boxes.get(image_id, ()):
            bx, by, bw, bh = pixel_box(x, y, w, h, width, height)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": class_id + 1,
                    "bbox": [bx, by, bw, bh],
                    "area": round(bw * bh, _DIGITS),
                    "iscrowd": 0,
                }
            )
    splits = [s for s in SPLITS if s in set(images["split"].to_list())]
    return {
        "info": {
            "description": f"alumi gold dataset {dataset_hash}",
            "version": dataset_hash,
            "dataset_hash": dataset_hash,
            "splits": splits,
        },
        "licenses": [],
        "images": coco_images,
        "categories": [{"id": i + 1, "name": name, "supercategory": "defect"} for i, name in enumerate(classes)],
        "annotations": annotations,
    }


def labelstudio_image_url(file: str) -> str:
    """The task's image reference: a Label Studio local-files URL, relative to its document root (the export)."""
    return LOCAL_FILES_URL + quote(file, safe="/")


def labelstudio_tasks(images: pl.DataFrame, labels: pl.DataFrame, classes: Sequence[str]) -> list[dict]:
    """One Label Studio task per image, its gold boxes as an annotation (ground truth, not predictions).

    An image without boxes gets an annotation with an empty result: it is labelled defect-free, not unlabelled.
    """
    boxes = boxes_by_image(labels)
    tasks = []
    for image_id, split, file, _label_file, width, height in images.iter_rows():
        result = []
        for number, (class_id, x, y, w, h) in enumerate(boxes.get(image_id, ())):
            px, py, pw, ph = percent_box(x, y, w, h)
            result.append(
                {
                    "id": f"{image_id[:12]}-{number}",
                    "type": "rectanglelabels",
                    "from_name": LS_FROM_NAME,
                    "to_name": LS_TO_NAME,
                    "original_width": width,
                    "original_height": height,
                    "value": {
                        "x": px,
                        "y": py,
                        "width": pw,
                        "height": ph,
                        "rotation": 0,
                        "rectanglelabels": [classes[class_id]],
                    },
                }
            )
        tasks.append(
            {
                "data": {LS_TO_NAME: labelstudio_image_url(file), "image_id": image_id, "split": split},
                "annotations": [{"result": result}],
            }
        )
    return tasks


def labelstudio_config(classes: Sequence[str]) -> str:
    """The labelling config: the image and one rectangle label per class, in class-id order."""
    labels = "".join(f"    <Label value={quoteattr(name)}/>\n" for name in classes)
    return (
        "<View>\n"
        f'  <Image name="{LS_TO_NAME}" value="${LS_TO_NAME}"/>\n'
        f'  <RectangleLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}">\n'
        f"{labels}"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def yolo_data_yaml(data_yaml: Mapping, splits: Sequence[str]) -> dict:
    """The gold ``data.yaml`` without the splits that were not exported."""
    return {k: v for k, v in data_yaml.items() if k not in SPLITS or k in splits}
