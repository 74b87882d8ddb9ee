"""Processed zone: normalised images with per-image features, and validated canonical labels.

``processing`` (assets ``processed_images`` + ``processed_labels``, checks ``labels_valid`` and
``images_valid``) calls :func:`process_batch`: raw objects in, ``lib.vision.imaging`` for the pixels.
"""

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from alumi_pipelines.assets.metadata import histogram_md
from alumi_pipelines.partitions import ingestion_backfill, landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


@multi_asset(
    specs=[
        AssetSpec(
            "processed_images",
            deps=["raw_images"],
            group_name="processed",
            owners=["team:data-engineering"],
            kinds={"parquet", "image"},
            description="Raw images normalised to 3-channel JPEG with the longest side at most the configured "
            "size, plus per-image features (brightness, contrast, sharpness, colour statistics, size).",
        ),
        AssetSpec(
            "processed_labels",
            deps=["raw_labels"],
            group_name="processed",
            owners=["team:data-engineering"],
            kinds={"parquet"},
            description="Canonical labels of the images that survived processing, exact duplicates removed.",
        ),
    ],
    check_specs=[
        AssetCheckSpec(
            "labels_valid",
            asset="processed_labels",
            blocking=True,
            description="Great Expectations suite on the batch's labels: class names and ids in the class map, "
            "boxes inside the image with positive size. Failing stops gold_dataset from using bad labels.",
        ),
        AssetCheckSpec(
            "images_valid",
            asset="processed_images",
            blocking=True,
            description="Great Expectations suite on the batch's image table: unique image ids, original sides at "
            "least the minimum, colour statistics in 0..255. Failing means an unusable image passed ingestion.",
        ),
    ],
    partitions_def=landing_batches,
    backfill_policy=ingestion_backfill,
    can_subset=False,
)
def processing(context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings):
    """Normalise images and labels of one or more batches."""
    images = written = boxes = 0
    classes: dict[str, int] = {}
    means: dict[str, float] = {}
    for batch in context.partition_keys:
        result = process_batch(lake, batch, pipeline_settings)
        images, written, boxes = images + result.images, written + result.written, boxes + result.boxes
        for name, n in result.class_counts.items():
            classes[name] = classes.get(name, 0) + n
        means = result.feature_means
        context.log.info(f"{batch}: {result.images} images ({result.written} new files), {result.boxes} boxes")
    first = context.partition_keys[0]
    yield from _checks(lake, pipeline_settings, list(context.partition_keys))
    yield MaterializeResult(
        asset_key="processed_images",
        metadata={
            "images": images,
            "new_files": written,
            "image_size": pipeline_settings.image_size,
            **{f"mean_{k}": v for k, v in means.items() if k in ("brightness", "contrast", "sharpness")},
            "features": MetadataValue.path(lake.uri(lake_keys.processed_features_key(first))),
        },
    )
    yield MaterializeResult(
        asset_key="processed_labels",
        metadata={
            "boxes": boxes,
            "class_histogram": MetadataValue.md(histogram_md(classes)),
            "table": MetadataValue.path(lake.uri(lake_keys.processed_labels_key(first))),
        },
    )


def _checks(lake: Lake, settings: PipelineSettings, batches: list[str]):
    from alumi_pipelines.lib.vision.quality import validate_image_table, validate_labels

    features, labels = read_processed(lake, batches)
    for check, asset_key, result in (
        ("labels_valid", "processed_labels", validate_labels(labels, list(settings.classes))),
        ("images_valid", "processed_images", validate_image_table(features, settings.min_image_side)),
    ):
        yield AssetCheckResult(
            check_name=check,
            asset_key=asset_key,
            passed=result.success,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "summary": result.summary(),
                "expectations": result.evaluated,
                "rows": labels.height if check == "labels_valid" else features.height,
            },
        )


# -- raw → processed (zone I/O) -------------------------------------------------------------------
@dataclass
class ProcessedBatch:
    images: int
    written: int
    boxes: int
    class_counts: dict[str, int]
    feature_means: dict[str, float]


def process_batch(lake: Lake, batch: str, settings: PipelineSettings) -> ProcessedBatch:
    """raw images of a batch → normalised JPEGs + a features table; raw labels → processed labels."""
    import polars as pl

    from alumi_pipelines.lib.vision import imaging
    from alumi_pipelines.lib.vision.labels import ClassMap

    manifest = lake.read_table(lake_keys.raw_manifest_key(batch))
    per_image = (
        manifest.sort("source_path")
        .group_by("image_id", maintain_order=True)
        .agg(
            pl.first("format", "width", "height", "channels", "line_id", "camera_id", "captured_at"),
            pl.col("labelled").any(),
            pl.len().alias("copies"),
        )
    )
    ids, formats, widths, heights, channels = (
        per_image[c].to_list() for c in ("image_id", "format", "width", "height", "channels")
    )

    def work(i: int):
        # read, normalise and write in the worker: file creation is slow on some disks and releases the GIL
        image_id, fmt = ids[i], formats[i]
        raw_key = lake_keys.raw_image_key(image_id, ".jpg" if fmt == "jpeg" else f".{fmt}")
        data = lake.read_bytes(raw_key)
        info = imaging.ImageInfo(widths[i], heights[i], channels[i], fmt)
        processed = imaging.normalise(data, info, settings.image_size, image_id=image_id)
        key = lake_keys.processed_image_key(image_id)
        if processed.data is data:  # already conforming: the processed zone shares the raw object
            new = lake.copy(raw_key, key)
        else:
            new = not lake.exists(key)
            if new:
                lake.write_bytes(key, processed.data)
        return processed.width, processed.height, processed.features, new  # not the bytes: a batch can be large

    results = list(imaging.parallel_map(work, range(len(ids)), settings.workers))
    written = sum(r[3] for r in results)
    features = _empty_features()
    if results:
        features = (
            per_image.rename({"width": "orig_width", "height": "orig_height"})
            .with_columns(
                pl.lit(batch).alias("batch"),
                pl.Series("width", [r[0] for r in results], pl.Int64),
                pl.Series("height", [r[1] for r in results], pl.Int64),
                *(pl.Series(c, [r[2][c] for r in results], pl.Float64) for c in imaging.FEATURE_COLUMNS),
            )
            .select(features.columns)
            .cast(features.schema)
        )
    lake.write_table(lake_keys.processed_features_key(batch), features)

    labels = lake.read_table(lake_keys.raw_labels_key(batch))
    cmap = ClassMap.of(settings.classes)
    labels = (
        labels.filter(pl.col("image_id").is_in(features["image_id"].implode()))
        .filter(pl.col("class_name").is_in(list(cmap.names)))
        .unique(
            subset=["image_id", "class_id", "x_center", "y_center", "width", "height", "source_file"],
            maintain_order=True,
        )
        .sort(["image_id", "source_file", "class_id", "x_center", "y_center"])
    )
    lake.write_table(lake_keys.processed_labels_key(batch), labels)
    counts = dict(labels.group_by("class_name").len().sort("class_name").iter_rows())
    means = {c: round(float(features[c].mean() or 0.0), 3) for c in imaging.FEATURE_COLUMNS} if results else {}
    return ProcessedBatch(len(results), written, labels.height, counts, means)


def _empty_features():
    import polars as pl

    from alumi_pipelines.lib.vision.imaging import FEATURE_COLUMNS

    schema: dict[str, Any] = {"image_id": pl.Utf8, "batch": pl.Utf8}
    schema.update({c: pl.Int64 for c in ("orig_width", "orig_height", "channels", "width", "height")})
    schema.update({"labelled": pl.Boolean, "copies": pl.UInt32})
    schema.update({c: pl.Utf8 for c in ("line_id", "camera_id", "captured_at")})
    schema.update({c: pl.Float64 for c in FEATURE_COLUMNS})
    return pl.DataFrame(schema=schema)


def read_processed(lake: Lake, batches: list[str] | None = None):
    """(features, labels) of the given processed batches, or of all of them."""
    from alumi_pipelines.lib.vision.labels import empty_labels

    if batches is None:
        batches = [
            PurePosixPath(f.key).stem
            for f in lake.list_files(lake_keys.PROCESSED_FEATURES)
            if f.key.endswith(".parquet")
        ]
    features = lake.read_tables([lake_keys.processed_features_key(b) for b in batches])
    labels = lake.read_tables(
        [lake_keys.processed_labels_key(b) for b in batches if lake.exists(lake_keys.processed_labels_key(b))]
    )
    return (features if features is not None else _empty_features()), (labels if labels is not None else empty_labels())
