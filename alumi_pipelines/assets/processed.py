"""Processed zone: normalised images with per-image features, and validated canonical labels."""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_layout as layout
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
    backfill_policy=BackfillPolicy.single_run(),
    can_subset=False,
)
def processing(context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings):
    """Normalise images and labels of one or more batches."""
    images = written = boxes = 0
    classes: dict[str, int] = {}
    means: dict[str, float] = {}
    for batch in context.partition_keys:
        result = layout.process_batch(lake, batch, pipeline_settings)
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
            "features": MetadataValue.path(lake.uri(layout.processed_features_key(first))),
        },
    )
    yield MaterializeResult(
        asset_key="processed_labels",
        metadata={
            "boxes": boxes,
            "class_histogram": MetadataValue.md(layout.histogram_md(classes)),
            "table": MetadataValue.path(lake.uri(layout.processed_labels_key(first))),
        },
    )


def _checks(lake: Lake, settings: PipelineSettings, batches: list[str]):
    from alumi_pipelines.lib.data_quality import validate_image_table, validate_labels

    features, labels = layout.read_processed(lake, batches)
    for check, asset_key, result in (
        ("labels_valid", "processed_labels", validate_labels(labels, list(settings.classes))),
        ("images_valid", "processed_images", validate_image_table(features, settings.min_image_side)),
    ):
        yield AssetCheckResult(
            check_name=check,
            asset_key=asset_key,
            passed=result.success,
            severity=AssetCheckSeverity.ERROR,
            metadata={"summary": result.summary(), "expectations": result.evaluated, "rows": labels.height if check == "labels_valid" else features.height},
        )
