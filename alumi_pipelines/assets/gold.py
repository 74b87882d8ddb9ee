"""Gold zone: the training-ready dataset, split and laid out for YOLO, named by its content hash."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from alumi_pipelines.resources import lake_layout as layout
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


@asset(
    deps=["processed_images", "processed_labels", "label_corrections"],
    group_name="gold",
    owners=["team:data-science"],
    kinds={"parquet", "yaml"},
    description="Every labelled image once (exact duplicates collapse to one image), one label set each "
    "(conflicts reported), a stable class-stratified train/val/test split, YOLO layout with data.yaml and "
    "a manifest; the folder is named by the dataset's content hash and gold/current.json points to it.",
)
def gold_dataset(context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings) -> MaterializeResult:
    info = layout.build_gold(lake, pipeline_settings)
    for conflict in info.conflicts[:20]:
        context.log.warning(f"conflicting labels for identical image {conflict['image_id'][:12]}: kept {conflict['kept']}, "
                            f"ignored {conflict['other']}")
    totals = {c: sum(info.class_counts[s][c] for s in info.class_counts) for c in info.classes}
    split_md = "| split | images | " + " | ".join(info.classes) + " |\n|---|---:|" + "---:|" * len(info.classes) + "\n"
    for s, n in info.counts.items():
        split_md += f"| {s} | {n} | " + " | ".join(str(info.class_counts[s][c]) for c in info.classes) + " |\n"
    return MaterializeResult(
        metadata={
            "dataset_hash": info.dataset_hash,
            "images": sum(info.counts.values()),
            **{f"{s}_images": n for s, n in info.counts.items()},
            "label_conflicts": len(info.conflicts),
            "reused_existing": info.reused,
            "class_histogram": MetadataValue.md(layout.histogram_md(totals)),
            "splits": MetadataValue.md(split_md),
            "data_yaml": MetadataValue.path(lake.uri(f"{info.prefix}/data.yaml")),
        },
    )


@asset_check(
    asset=gold_dataset,
    blocking=True,
    description="No image (by content hash) appears in more than one split of the current gold dataset. "
    "Failing means test scores would be inflated by training images.",
)
def no_split_leakage(lake: Lake) -> AssetCheckResult:
    import polars as pl

    manifest = layout.read_gold_manifest(lake)
    leaked = manifest.group_by("image_id").agg(pl.col("split").n_unique().alias("n")).filter(pl.col("n") > 1)
    return AssetCheckResult(
        passed=leaked.is_empty(),
        metadata={"images": manifest.height, "leaked_images": leaked.height,
                  "examples": MetadataValue.text(", ".join(leaked["image_id"].head(5).to_list()))},
    )


@asset_check(
    asset=gold_dataset,
    blocking=True,
    description="Train and val are non-empty and every class has training boxes. Failing means a model "
    "trained now could not learn or be evaluated on some class.",
)
def splits_cover_classes(lake: Lake) -> AssetCheckResult:
    pointer = layout.read_gold_pointer(lake)
    missing = [c for c in pointer["classes"] if pointer["class_counts"]["train"].get(c, 0) == 0]
    empty = [s for s in ("train", "val") if pointer["counts"].get(s, 0) == 0]
    return AssetCheckResult(
        passed=not missing and not empty,
        metadata={"classes_without_train_boxes": MetadataValue.text(", ".join(missing) or "none"),
                  "empty_splits": MetadataValue.text(", ".join(empty) or "none"), **{f"{s}_images": n for s, n in pointer["counts"].items()}},
    )


@asset_check(
    asset=gold_dataset,
    blocking=False,
    description="Identical images (same bytes) that arrived with different label sets. Warns: one set was "
    "kept (the earliest batch), the others need a QA look.",
)
def identical_images_label_conflicts(lake: Lake) -> AssetCheckResult:
    pointer = layout.read_gold_pointer(lake)
    n = int(pointer.get("conflicts", 0))
    return AssetCheckResult(passed=n == 0, severity=AssetCheckSeverity.WARN, metadata={"conflicts": n})
