"""Plan a gold dataset: one label set per unique image, conflicts reported, a stable split, a hash."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from alumi_pipelines.lib.boxes import iou_cxcywh
from alumi_pipelines.lib.vision.splits import DEFAULT_FRACTIONS, SPLITS, assign_splits, dataset_hash

_ROUND = 6  # decimals kept for box coordinates in the hash and the YOLO files
AGREE_IOU = 0.5  # two label sets of one image agree when every box has a same-class partner this close


@dataclass
class GoldPlan:
    dataset_hash: str
    manifest: pl.DataFrame  # image_id, split, file, label_file, width, height, n_boxes, classes
    labels: pl.DataFrame  # canonical labels of the chosen label sets, with their split
    label_text: dict[str, str]  # image_id -> YOLO txt content
    counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    conflicts: list[dict] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)
    held_out: list[dict] = field(default_factory=list)  # image_id, batch, reason: left out for review


class GoldDatasetError(ValueError):
    pass


def _label_sets(labels: pl.DataFrame) -> tuple[dict[str, tuple], list[dict]]:
    """image_id -> chosen label set; conflicts where one image carries different label sets."""
    chosen: dict[str, tuple] = {}
    sources: dict[str, str] = {}
    conflicts: list[dict] = []
    rows = labels.sort(["image_id", "batch", "source_file"]).select(
        "image_id", "batch", "source_file", "class_id", "x_center", "y_center", "width", "height"
    )
    groups: dict[tuple[str, str, str], list[tuple]] = {}
    for image_id, batch, source, cid, x, y, w, h in rows.iter_rows():
        box = (int(cid), round(x, _ROUND), round(y, _ROUND), round(w, _ROUND), round(h, _ROUND))
        groups.setdefault((image_id, batch, source), []).append(box)
    for (image_id, batch, source), boxes in sorted(groups.items()):
        key = tuple(sorted(set(boxes)))
        if image_id not in chosen:
            chosen[image_id], sources[image_id] = key, f"{batch}/{source}"
        elif not sets_agree(chosen[image_id], key):
            conflicts.append(
                {
                    "image_id": image_id,
                    "kept": sources[image_id],
                    "other": f"{batch}/{source}",
                    "kept_boxes": len(chosen[image_id]),
                    "other_boxes": len(key),
                }
            )
    return chosen, conflicts


def sets_agree(a: tuple, b: tuple) -> bool:
    """Same number of boxes and a one-to-one same-class match at IoU >= AGREE_IOU (greedy)."""
    if len(a) != len(b):
        return False
    unmatched = list(b)
    for box in a:
        best = max((m for m in unmatched if m[0] == box[0]), key=lambda m: iou_cxcywh(box[1:5], m[1:5]), default=None)
        if best is None or iou_cxcywh(box[1:5], best[1:5]) < AGREE_IOU:
            return False
        unmatched.remove(best)
    return True


def held_out_images(features: pl.DataFrame) -> list[dict]:
    """Images (once each, by content hash) any copy of which has rejected annotation records, with the reason."""
    if "held_out" not in features.columns:
        return []
    held = (
        features.filter(pl.col("held_out").fill_null("") != "")
        .sort(["image_id", "batch"])
        .unique(subset=["image_id"], keep="first", maintain_order=True)
    )
    return [
        {"image_id": i, "batch": b, "reason": r} for i, b, r in held.select("image_id", "batch", "held_out").iter_rows()
    ]


def plan_dataset(
    features: pl.DataFrame,
    labels: pl.DataFrame,
    classes: list[str],
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> GoldPlan:
    """Choose labels per unique labelled image, split them and hash the result.

    Images held out (``held_out`` not empty: annotation records of theirs were rejected) never enter, not even
    as defect-free examples: an image with no boxes in gold is one its annotation said has no defects.
    """
    held_out = held_out_images(features)
    held_ids = [h["image_id"] for h in held_out]
    images = (
        features.filter(pl.col("labelled") & ~pl.col("image_id").is_in(held_ids))
        .sort(["batch", "image_id"])
        .unique(subset=["image_id"], keep="first", maintain_order=True)
        .select("image_id", "width", "height")
    )
    if images.is_empty():
        raise GoldDatasetError("no labelled images in processed/: ingest a labelled batch first")
    labels = labels.filter(pl.col("image_id").is_in(images["image_id"].implode()))
    chosen, conflicts = _label_sets(labels)

    image_classes = {
        image_id: [classes[b[0]] for b in chosen.get(image_id, ())] for image_id in images["image_id"].to_list()
    }
    split = assign_splits(image_classes, seed=seed, fractions=fractions)

    manifest_rows, label_rows, label_text = [], [], {}
    for image_id, width, height in images.iter_rows():
        s = split.assignment[image_id]
        boxes = chosen.get(image_id, ())
        label_text[image_id] = yolo_label_text(boxes)
        manifest_rows.append(
            {
                "image_id": image_id,
                "split": s,
                "file": f"images/{s}/{image_id}.jpg",
                "label_file": f"labels/{s}/{image_id}.txt",
                "width": width,
                "height": height,
                "n_boxes": len(boxes),
                "classes": ",".join(sorted({classes[b[0]] for b in boxes})),
            }
        )
        for c, x, y, w, h in boxes:
            label_rows.append(
                {
                    "image_id": image_id,
                    "split": s,
                    "class_id": c,
                    "class_name": classes[c],
                    "x_center": x,
                    "y_center": y,
                    "width": w,
                    "height": h,
                }
            )
    manifest = pl.DataFrame(manifest_rows, orient="row").sort(["split", "image_id"])
    label_schema = {
        "image_id": pl.Utf8,
        "split": pl.Utf8,
        "class_id": pl.Int32,
        "class_name": pl.Utf8,
        "x_center": pl.Float64,
        "y_center": pl.Float64,
        "width": pl.Float64,
        "height": pl.Float64,
    }
    gold_labels = pl.DataFrame(label_rows, schema=label_schema, orient="row").sort(
        ["image_id", "class_id", "x_center", "y_center"]
    )
    hash_rows = [(r["image_id"], r["split"], label_text[r["image_id"]]) for r in manifest_rows]
    counts = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
    class_counts = {
        s: {c: int(((gold_labels["split"] == s) & (gold_labels["class_name"] == c)).sum()) for c in classes}
        for s in SPLITS
    }
    return GoldPlan(
        dataset_hash=dataset_hash(hash_rows, classes),
        manifest=manifest,
        labels=gold_labels,
        label_text=label_text,
        counts=counts,
        class_counts=class_counts,
        conflicts=conflicts,
        moved=split.moved,
        held_out=held_out,
    )


# -- a version as a manifest: list files and label files, no image copies --------------------------------
LIST_FILES = {split: f"{split}.txt" for split in SPLITS}  # YOLO list files, written where a version is staged
# what a version's manifest stores no more: each is a function of image_id and split (and the lake's key rule)
DERIVED_COLUMNS = ("file", "label_file", "image_key")
_MANIFEST_ORDER = ("image_id", "split", "file", "label_file", "width", "height", "n_boxes", "classes", "image_key")
IMAGE_ROW = "image_row"  # a stored label's image: its row in the version's stored manifest (0-based)


def yolo_label_text(boxes) -> str:
    """A YOLO label file: one ``class x y w h`` line per box (sorted, 6 decimals)."""
    return "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in sorted(boxes))


def label_texts(labels: pl.DataFrame, image_ids: list[str]) -> dict[str, str]:
    """image_id -> YOLO label text, from a gold label table (the same text ``plan_dataset`` chose)."""
    boxes: dict[str, list[tuple]] = {image_id: [] for image_id in image_ids}
    rows = labels.select("image_id", "class_id", "x_center", "y_center", "width", "height").iter_rows()
    for image_id, c, x, y, w, h in rows:
        if image_id in boxes:
            boxes[image_id].append((int(c), x, y, w, h))
    return {image_id: yolo_label_text(b) for image_id, b in boxes.items()}


def data_yaml_doc(classes: list[str]) -> dict:
    """``data.yaml`` of a version: YOLO list files per split (``./images/<split>/<image>.jpg`` lines)."""
    return {"path": ".", **{split: LIST_FILES[split] for split in SPLITS}, "names": dict(enumerate(classes))}


def list_file_text(manifest: pl.DataFrame, split: str) -> str:
    """The YOLO list file of a split: the images' paths relative to data.yaml, sorted (``manifest`` as
    :func:`expand_manifest` returns it)."""
    files = sorted(manifest.filter(pl.col("split") == split)["file"].to_list())
    return "".join(f"./{f}\n" for f in files)


def is_manifest_version(manifest: pl.DataFrame) -> bool:
    """A version that references content-addressed images (``sha256`` of each processed image) instead of
    holding copies: stored with or without the columns :func:`expand_manifest` derives."""
    return "sha256" in manifest.columns


def stored_manifest(manifest: pl.DataFrame) -> pl.DataFrame:
    """The manifest as a version stores it: without the columns derivable from image_id and split."""
    return manifest.drop([c for c in DERIVED_COLUMNS if c in manifest.columns])


def expand_manifest(manifest: pl.DataFrame, image_key: Callable[[str], str], source: str = "manifest") -> pl.DataFrame:
    """A stored manifest with its derived columns back: ``file`` (``images/<split>/<image_id>.jpg``),
    ``label_file`` (``labels/<split>/<image_id>.txt``) and, for a manifest version, ``image_key``
    (``image_key(image_id)``: where the processed image is). A manifest that holds them (written before they
    were derived, or with image copies) is returned as it is."""
    missing = [c for c in ("image_id", "split") if c not in manifest.columns]
    if missing:
        raise GoldDatasetError(f"{source}: no column {', '.join(missing)}: not a gold manifest; rebuild the version")
    derived = []
    if "file" not in manifest.columns:
        derived.append(pl.format("images/{}/{}.jpg", "split", "image_id").alias("file"))
        derived.append(pl.format("labels/{}/{}.txt", "split", "image_id").alias("label_file"))
    if is_manifest_version(manifest) and "image_key" not in manifest.columns:
        keys = [image_key(i) for i in manifest["image_id"].to_list()]
        derived.append(pl.Series("image_key", keys, dtype=pl.Utf8))
    if not derived:
        return manifest
    out = manifest.with_columns(derived)
    first = [c for c in _MANIFEST_ORDER if c in out.columns]
    return out.select(first + [c for c in out.columns if c not in first])


def stored_labels(labels: pl.DataFrame, manifest: pl.DataFrame) -> pl.DataFrame:
    """The label table as a version stores it: each box keyed by its image's row in the stored ``manifest``
    (``image_row``) instead of its image_id and split; rows, coordinates and their types unchanged."""
    rows = dict(zip(manifest["image_id"].to_list(), range(manifest.height)))
    unknown = sorted(set(labels["image_id"].to_list()) - rows.keys())
    if unknown:
        raise GoldDatasetError(f"labels: {len(unknown)} image(s) not in the manifest, e.g. {unknown[0]}")
    index = pl.Series(IMAGE_ROW, [rows[i] for i in labels["image_id"].to_list()], dtype=pl.UInt32)
    return labels.select(index, pl.exclude("image_id", "split"))


def expand_labels(labels: pl.DataFrame, manifest: pl.DataFrame, source: str = "labels") -> pl.DataFrame:
    """A stored label table as readers see it: ``image_id`` and ``split`` joined back from the version's whole
    manifest (by ``image_row``), in the stored row order. A table that holds image_id is returned as it is."""
    if IMAGE_ROW not in labels.columns:
        return labels
    index = labels[IMAGE_ROW]
    if labels.height and (index.null_count() or int(index.max()) >= manifest.height):
        raise GoldDatasetError(
            f"{source}: {IMAGE_ROW} must name a row of the version's manifest (0 to {manifest.height - 1}); "
            "the label table belongs to another version: rebuild the version"
        )
    back = [manifest["image_id"].gather(index).alias("image_id"), manifest["split"].gather(index).alias("split")]
    return labels.select(*back, pl.exclude(IMAGE_ROW))
