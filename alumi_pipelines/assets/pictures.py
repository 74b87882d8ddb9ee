"""Pictures of the data in asset metadata: mosaics of sample images with their boxes and class names.

Each function reads what it shows from the lake (or, for the evaluation, the staged test split), hands the pixels
to ``lib.vision.mosaic`` and returns metadata entries (an inline PNG the UI renders, see ``metadata.png_md``):
a processed batch's images with their processed labels, a gold version's images per split covering every class,
a batch's quarantine with each reason (a record without a readable image shows the reason as text), and the
evaluated model's worst misses and false alarms on the test split. Samples are chosen by hash, so
re-materialising shows the same images.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from dagster import MetadataValue

from alumi_pipelines.assets.metadata import png_md
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake

SIDE = 160  # thumbnail side in pixels
COLUMNS = 4
MAX_TILES = 12


def picture(key: str, title: str, png: bytes) -> dict[str, Any]:
    """The metadata entry of one mosaic."""
    return {key: MetadataValue.md(png_md(title, png))}


def _boxes_by_image(labels, ids: list[str]) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    import polars as pl

    out: dict[str, list] = {i: [] for i in ids}
    rows = labels.filter(pl.col("image_id").is_in(pl.Series(ids, dtype=pl.Utf8).implode())).select(
        "image_id", "class_name", "x_center", "y_center", "width", "height"
    )
    for image_id, name, *box in rows.iter_rows():
        if None not in box:
            out[image_id].append((str(name), tuple(float(v) for v in box)))
    return out


def _decoded(lake: Lake, keys: dict[str, str], limits=None) -> dict[str, Any]:
    """image id → BGR array (or the reason it cannot be shown), the bytes read through the lake's pool."""
    from alumi_pipelines.lib.vision.imaging import ImageRejected, decode

    found = lake.read_many(keys.values())
    out: dict[str, Any] = {}
    for image_id, key in keys.items():
        try:
            out[image_id] = decode(found[key], limits=limits)
        except ImageRejected as exc:
            out[image_id] = str(exc)
    return out


def _labelled_tiles(lake: Lake, chosen: list[str], keys: dict[str, str], boxes: dict, classes, captions: dict):
    from alumi_pipelines.lib.vision.mosaic import Box, Tile, class_colours, colour_of

    colours = class_colours(list(classes))
    images = _decoded(lake, {i: keys[i] for i in chosen})
    tiles = []
    for image_id in chosen:
        image = images[image_id]
        drawn = [Box.from_cxcywh(*b, name, colour_of(name, colours)) for name, b in boxes.get(image_id, [])]
        if isinstance(image, str):
            tiles.append(Tile(None, f"{captions[image_id]}: {image}"))
        else:
            tiles.append(Tile(image, captions[image_id], drawn))
    return tiles


def processed_samples(lake: Lake, batches: list[str], classes) -> dict[str, Any]:
    """``samples``: up to 12 images of the batches as processed, with their processed labels (every class that
    has boxes in the batches shown at least once), captioned with the landing file name and the box count."""
    from alumi_pipelines.assets.processed import read_processed
    from alumi_pipelines.lib.vision.mosaic import mosaic_png, pick

    features, labels = read_processed(lake, batches)
    ids = sorted(set(features["image_id"].to_list()))
    if not ids:
        return {}
    boxes = _boxes_by_image(labels, ids)
    chosen = pick(ids, MAX_TILES, classes_of=lambda i: [n for n, _ in boxes[i]])
    names: dict[str, str] = {}
    for batch in batches:
        manifest = lake.read_table(lake_keys.raw_manifest_key(batch)).select("image_id", "source_path")
        for image_id, path in manifest.sort("source_path").iter_rows():
            names.setdefault(image_id, PurePosixPath(path).name)
    captions = {i: f"{names.get(i, i[:12])} ({len(boxes[i])} boxes)" for i in chosen}
    keys = {i: lake_keys.processed_image_key(i) for i in chosen}
    tiles = _labelled_tiles(lake, chosen, keys, boxes, classes, captions)
    return picture("samples", f"{len(chosen)} of {len(ids)} images with their processed labels", mosaic_png(tiles))


def gold_samples(lake: Lake, prefix: str, classes) -> dict[str, Any]:
    """``samples``: one row of images per split of a gold version (each row covers every class it can), boxes
    and class names drawn, captioned with the split and the image id."""
    import polars as pl

    from alumi_pipelines.assets.gold import gold_image_keys, read_version
    from alumi_pipelines.lib.vision.mosaic import Tile, mosaic_png, pick
    from alumi_pipelines.lib.vision.splits import SPLITS

    manifest, labels = read_version(lake, prefix)
    by_file = gold_image_keys(lake, prefix)
    tiles, shown = [], 0
    for split in SPLITS:
        rows = manifest.filter(pl.col("split") == split).select("image_id", "file")
        ids = rows["image_id"].to_list()
        boxes = _boxes_by_image(labels, ids)
        chosen = pick(ids, COLUMNS, classes_of=lambda i, b=boxes: [n for n, _ in b[i]], salt=split)
        keys = dict(zip(rows["image_id"].to_list(), (by_file[f] for f in rows["file"].to_list())))
        captions = {i: f"{split}: {i[:12]}" for i in chosen}
        row = _labelled_tiles(lake, chosen, keys, boxes, classes, captions)
        shown += len(row)
        blank = [Tile(None, f"{split}: no more images" if i == len(row) else "") for i in range(len(row), COLUMNS)]
        tiles += row + blank
    title = f"{shown} images, one row per split ({', '.join(SPLITS)}), with their gold labels"
    return picture("samples", title, mosaic_png(tiles, columns=COLUMNS, max_tiles=COLUMNS * len(SPLITS)))


def quarantine_samples(lake: Lake, batches: list[str], limits=None) -> dict[str, Any]:
    """``quarantine_samples``: up to 12 quarantined files of the batches, each captioned with its reason; a
    record without a readable image (an annotation, a corrupt file) is a text tile naming the file and reason."""
    from alumi_pipelines.lib.vision.mosaic import Tile, mosaic_png, pick

    rows: dict[str, tuple[str, str, str]] = {}
    for batch in batches:
        key = lake_keys.quarantine_table_key(batch)
        if lake.exists(key):
            for path, stage, reason in lake.read_table(key).select("path", "stage", "reason").iter_rows():
                rows.setdefault(f"{batch}/{path}/{stage}/{reason}", (batch, path, reason))
    if not rows:
        return {}
    chosen = pick(rows, MAX_TILES)
    files = {row: lake_keys.quarantine_file_key(rows[row][0], rows[row][1]) for row in chosen}
    # only files quarantine holds a copy of (not an annotation's mention of a missing image)
    present = {f.key for b in batches for f in lake.list_files(lake_keys.quarantine_file_key(b, "").rstrip("/"))}
    images = _decoded(lake, {r: k for r, k in files.items() if k in present}, limits)
    tiles = []
    for row in chosen:
        _, path, reason = rows[row]
        image = images.get(row)
        if image is None or isinstance(image, str):
            tiles.append(Tile(None, f"{PurePosixPath(path).name}: {reason}"))
        else:
            tiles.append(Tile(image, reason))
    title = f"{len(chosen)} of {len(rows)} quarantined records with their reason"
    return picture("quarantine_samples", title, mosaic_png(tiles))


def evaluation_errors(
    weights: Path, dataset_root: Path, classes: list[str], *, imgsz: int, config_dir: Path
) -> dict[str, Any]:
    """``worst_errors``: the test images where the model did worst at the edge server's confidence threshold
    (ground-truth boxes it missed in red, its false alarms in amber), ranked by missed boxes plus the false alarms'
    confidence; ``test_images_with_errors``: how many test images have a missed box or a false alarm."""
    import numpy as np

    from alumi_pipelines.lib.export.onnx_export import ExportError
    from alumi_pipelines.lib.export.predict import DEPLOY_CONF, predict_torch
    from alumi_pipelines.lib.export.yolo_data import read_bgr, read_yolo_split
    from alumi_pipelines.lib.vision.mosaic import Tile, find_errors, mosaic_png, worst_first

    try:
        truths = read_yolo_split(dataset_root, "test", len(classes))
    except ExportError as exc:
        return {"worst_errors": MetadataValue.text(f"not drawn: {exc}")}
    found = predict_torch(weights, [t.path for t in truths], config_dir=config_dir, imgsz=imgsz, conf=DEPLOY_CONF)

    def normalised(boxes: np.ndarray, width: int, height: int) -> list[tuple[float, float, float, float]]:
        return [
            ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
            for x1, y1, x2, y2 in boxes.astype(float).tolist()
        ]

    errors = []
    for truth, detections in zip(truths, found):
        names = [classes[int(c)] for c in truth.class_ids]
        labels = list(zip(names, normalised(truth.boxes, truth.width, truth.height)))
        predicted = [
            (classes[int(c)], round(float(conf), 2), box)
            for c, conf, box in zip(
                detections.class_ids, detections.confidences, normalised(detections.boxes, truth.width, truth.height)
            )
        ]
        errors.append(find_errors(truth.path.name, labels, predicted))
    worst = worst_first(errors, MAX_TILES)
    with_errors = sum(1 for e in errors if e.score > 0)
    if not worst:
        none = f"none: no missed box or false alarm on {len(truths)} test images"
        return {"worst_errors": MetadataValue.text(none), "test_images_with_errors": 0}
    by_name = {t.path.name: t.path for t in truths}
    tiles = [Tile(read_bgr(by_name[e.name]), e.caption(), e.boxes()) for e in worst]
    title = (
        f"worst {len(worst)} of {with_errors} test images with errors (of {len(truths)}; confidence ≥ {DEPLOY_CONF}): "
        "missed ground truth red, false alarms amber"
    )
    return {**picture("worst_errors", title, mosaic_png(tiles)), "test_images_with_errors": with_errors}
