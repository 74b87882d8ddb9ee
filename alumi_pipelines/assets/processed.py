"""Processed zone: normalised images with per-image features, and validated canonical labels.

``processing`` (assets ``processed_images`` + ``processed_labels``, checks ``labels_valid`` and
``images_valid``) calls :func:`process_batch`: raw objects in, ``lib.vision.imaging`` for the pixels.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
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
from alumi_pipelines.assets.pictures import processed_samples
from alumi_pipelines.assets.raw import image_limits
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
    images = written = boxes = quarantined = 0
    classes: dict[str, int] = {}
    means: dict[str, float] = {}
    for batch in context.partition_keys:
        result = process_batch(lake, batch, pipeline_settings, log=context.log.info)
        images, written, boxes = images + result.images, written + result.written, boxes + result.boxes
        quarantined += len(result.rejected)
        for rejected in result.rejected[:20]:
            context.log.warning(f"{batch}: quarantined {rejected['path']}: {rejected['reason']}")
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
            "quarantined": quarantined,
            "image_size": pipeline_settings.image_size,
            **{f"mean_{k}": v for k, v in means.items() if k in ("brightness", "contrast", "sharpness")},
            "features": MetadataValue.path(lake.uri(lake_keys.processed_features_key(first))),
            **processed_samples(lake, list(context.partition_keys), pipeline_settings.classes),
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
    rejected: list[dict] = field(default_factory=list)  # quarantine rows of images that could not be processed


def process_batch(lake: Lake, batch: str, settings: PipelineSettings, log: Callable | None = None) -> ProcessedBatch:
    """raw images of a batch → normalised JPEGs + a features table; raw labels → processed labels (progress of
    the images through ``log``)."""
    import polars as pl

    from alumi_pipelines.lib.files import sha256_hex
    from alumi_pipelines.lib.vision import imaging
    from alumi_pipelines.lib.vision.labels import ClassMap

    # everything the step reads besides the images, at once: one round trip, not four, on an object store
    manifest, raw_labels, earlier_quarantine, may_be_absent = lake.gather(
        lambda: lake.read_table(lake_keys.raw_manifest_key(batch)),
        lambda: lake.read_table(lake_keys.raw_labels_key(batch)),
        lambda: _table_or_none(lake, lake_keys.quarantine_table_key(batch)),
        lambda: lake.absent_filter(lake_keys.PROCESSED_IMAGES),  # listed once: a known image costs no request
    )
    if "held_out" not in manifest.columns:  # a manifest written before images were held out
        manifest = manifest.with_columns(pl.lit("").alias("held_out"))
    per_image = (
        manifest.sort("source_path")
        .group_by("image_id", maintain_order=True)
        .agg(
            pl.first("format", "width", "height", "channels", "line_id", "camera_id", "captured_at"),
            pl.col("labelled").any(),
            pl.col("held_out").fill_null("").max(),  # one copy with rejected records holds the image out
            pl.len().alias("copies"),
        )
    )
    ids, formats, widths, heights, channels = (
        per_image[c].to_list() for c in ("image_id", "format", "width", "height", "channels")
    )
    limits = image_limits(settings)

    # on an object store, the local cache holds the raw images ingested on this machine (named by their sha256,
    # the image id) and receives the processed ones, which staging for training then finds
    cache = None if lake.is_local else settings.cache()

    def work(i: int):
        # read, normalise and write in the worker: file creation is slow on some disks and releases the GIL
        image_id, fmt = ids[i], formats[i]
        raw_key = lake_keys.raw_image_key(image_id, ".jpg" if fmt == "jpeg" else f".{fmt}")
        data = cache.get(image_id) if cache is not None else None
        if data is None:
            data = lake.read_bytes(raw_key)
        info = imaging.ImageInfo(widths[i], heights[i], channels[i], fmt)
        try:  # the header is checked against the limits again: they may be lower than at ingestion
            processed = imaging.normalise(data, info, settings.image_size, image_id=image_id, limits=limits)
        except imaging.ImageRejected as exc:
            return str(exc)
        key = lake_keys.processed_image_key(image_id)
        if not may_be_absent(key):
            new = False
        elif processed.data is data:  # already conforming: the processed zone shares the raw object
            new = lake.copy(raw_key, key)
        else:
            new = lake.write_if_absent(key, processed.data)
        digest = image_id if processed.data is data else sha256_hex(processed.data)
        if cache is not None and digest != image_id:
            cache.put(digest, processed.data)
            cache.discard(image_id)  # the raw bytes are in the lake; the cache keeps what training reads
        # not the bytes: a batch can be large
        return processed.width, processed.height, processed.features, new, digest, len(processed.data)

    outcomes = imaging.parallel_map(work, range(len(ids)), lake.io_workers(settings.workers), chunk=lake.io_chunk())
    outcomes = list(settings.progress(f"processed {batch}", len(ids), log).track(outcomes) if log else outcomes)
    if cache is not None:
        cache.prune()
    refused = {ids[i]: reason for i, reason in enumerate(outcomes) if isinstance(reason, str)}
    results = [r for r in outcomes if not isinstance(r, str)]
    if refused:
        per_image = per_image.filter(~pl.col("image_id").is_in(list(refused)))
    written = sum(r[3] for r in results)
    features = _empty_features()
    if results:
        features = (
            per_image.rename({"width": "orig_width", "height": "orig_height"})
            .with_columns(
                pl.lit(batch).alias("batch"),
                pl.Series("width", [r[0] for r in results], pl.Int64),
                pl.Series("height", [r[1] for r in results], pl.Int64),
                pl.Series("processed_sha256", [r[4] for r in results], pl.Utf8),
                pl.Series("processed_bytes", [r[5] for r in results], pl.Int64),
                *(pl.Series(c, [r[2][c] for r in results], pl.Float64) for c in imaging.FEATURE_COLUMNS),
            )
            .select(features.columns)
            .cast(features.schema)
        )

    cmap = ClassMap.of(settings.classes)
    labels = (
        raw_labels.filter(pl.col("image_id").is_in(features["image_id"].implode()))
        .filter(pl.col("class_name").is_in(list(cmap.names)))
        .unique(
            subset=["image_id", "class_id", "x_center", "y_center", "width", "height", "source_file"],
            maintain_order=True,
        )
        .sort(["image_id", "source_file", "class_id", "x_center", "y_center"])
    )
    # the labels and the quarantine at once (one round trip on an object store), then the features table last: it
    # is what makes the batch processed (readers list it), so a batch with features always has its labels
    _, rejected = lake.gather(
        lambda: lake.write_table(lake_keys.processed_labels_key(batch), labels),
        lambda: quarantine_refused(lake, batch, manifest, refused, earlier_quarantine),
    )
    lake.write_table(lake_keys.processed_features_key(batch), features)
    counts = dict(labels.group_by("class_name").len().sort("class_name").iter_rows())
    means = {c: round(float(features[c].mean() or 0.0), 3) for c in imaging.FEATURE_COLUMNS} if results else {}
    return ProcessedBatch(len(results), written, labels.height, counts, means, rejected)


def quarantine_refused(lake: Lake, batch: str, manifest, refused: dict[str, str], earlier=None) -> list[dict]:
    """Add the images processing refused (``image_id`` → reason) to the batch's quarantine, stage ``processed``.

    Rows of an earlier processing run are replaced, so re-running gives the same table; each image's raw bytes are
    copied under its landing path. ``earlier``: the batch's quarantine table as read before (None: none yet).
    """
    import polars as pl

    from alumi_pipelines.lib.vision.ingest import REJECTION_COLUMNS

    rows = [
        {"batch": batch, "path": path, "stage": "processed", "reason": refused[image_id]}
        for image_id, path, fmt in manifest.select("image_id", "source_path", "format").iter_rows()
        if image_id in refused
    ]
    key = lake_keys.quarantine_table_key(batch)
    schema = {c: pl.Utf8 for c in REJECTION_COLUMNS}
    if earlier is None:
        earlier = pl.DataFrame(schema=schema)
    if not rows and not (earlier["stage"] == "processed").any():
        return []
    table = pl.concat([earlier.filter(pl.col("stage") != "processed"), pl.DataFrame(rows, schema=schema, orient="row")])
    copies = [
        (
            lake_keys.raw_image_key(image_id, ".jpg" if fmt == "jpeg" else f".{fmt}"),
            lake_keys.quarantine_file_key(batch, path),
        )
        for image_id, path, fmt in manifest.select("image_id", "source_path", "format").iter_rows()
        if image_id in refused
    ]
    lake.map(lambda pair: lake.copy(*pair), copies)
    lake.write_table(key, table.sort(["path", "stage", "reason"]))
    return rows


def _table_or_none(lake: Lake, key: str):
    """The table at ``key``, or None when there is none (one request: the read answers whether it exists)."""
    try:
        return lake.read_table(key)
    except FileNotFoundError:
        return None


def _empty_features():
    import polars as pl

    from alumi_pipelines.lib.vision.imaging import FEATURE_COLUMNS

    schema: dict[str, Any] = {"image_id": pl.Utf8, "batch": pl.Utf8}
    schema.update({c: pl.Int64 for c in ("orig_width", "orig_height", "channels", "width", "height")})
    schema.update({"labelled": pl.Boolean, "copies": pl.UInt32})
    schema.update({c: pl.Utf8 for c in ("line_id", "camera_id", "captured_at", "held_out")})
    schema.update({c: pl.Float64 for c in FEATURE_COLUMNS})
    # the stored processed image: its sha256 (verified when staged) and size
    schema.update({"processed_sha256": pl.Utf8, "processed_bytes": pl.Int64})
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
    present = {f.key for f in lake.list_files(lake_keys.PROCESSED_LABELS)}  # one listing, not one check per batch
    labels = lake.read_tables([k for k in (lake_keys.processed_labels_key(b) for b in batches) if k in present])
    return (features if features is not None else _empty_features()), (labels if labels is not None else empty_labels())
