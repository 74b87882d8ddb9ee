"""Raw zone: landing batches ingested into content-addressed images, a manifest and raw labels."""


from dagster import (
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
            "raw_images",
            group_name="raw",
            owners=["team:data-engineering"],
            kinds={"parquet", "image"},
            description="Landing images checked (decodable, minimum size), stored by sha256 under raw/images, "
            "with a manifest table per batch; rejected files go to quarantine/ with their reason.",
        ),
        AssetSpec(
            "raw_labels",
            group_name="raw",
            owners=["team:data-engineering"],
            kinds={"parquet"},
            description="Every batch's annotations (alumi, YOLO, VOC, COCO, LabelMe) in the canonical label "
            "table, resolved against the class map; rejected records go to quarantine/.",
        ),
    ],
    partitions_def=landing_batches,
    backfill_policy=BackfillPolicy.single_run(),
    can_subset=False,
)
def raw_ingestion(context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings):
    """Ingest one or more landing batches (one partition each)."""
    totals = {"files": 0, "images": 0, "unique": 0, "boxes": 0, "quarantined": 0}
    classes: dict[str, int] = {}
    for batch in context.partition_keys:
        result = layout.ingest_landing_batch(lake, batch, pipeline_settings)
        totals["images"] += len(result.manifest)
        totals["unique"] += len({m["image_id"] for m in result.manifest})
        totals["boxes"] += len(result.labels)
        totals["quarantined"] += len(result.rejections)
        for row in result.labels:
            classes[row["class_name"]] = classes.get(row["class_name"], 0) + 1
        for note in result.notes[:20]:
            context.log.info(f"{batch}: {note}")
        for rej in result.rejections[:20]:
            context.log.warning(f"{batch}: quarantined {rej['path']}: {rej['reason']}")
        context.log.info(
            f"{batch}: {len(result.manifest)} images, {len(result.labels)} boxes, {len(result.rejections)} quarantined"
        )
    batches = list(context.partition_keys)
    yield MaterializeResult(
        asset_key="raw_images",
        metadata={
            "batches": MetadataValue.text(", ".join(batches[:10]) + (" …" if len(batches) > 10 else "")),
            "images": totals["images"],
            "unique_images": totals["unique"],
            "duplicates_in_batch": totals["images"] - totals["unique"],
            "quarantined": totals["quarantined"],
            "manifest": MetadataValue.path(lake.uri(layout.raw_manifest_key(batches[0]))),
        },
    )
    yield MaterializeResult(
        asset_key="raw_labels",
        metadata={
            "boxes": totals["boxes"],
            "class_histogram": MetadataValue.md(layout.histogram_md(classes)),
            "table": MetadataValue.path(lake.uri(layout.raw_labels_key(batches[0]))),
        },
    )
