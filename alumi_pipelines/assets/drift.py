"""Drift: features of recent production batches against the champion's training set (evidently)."""

import hashlib
import json
import os

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from alumi_pipelines.resources import lake_layout as layout
from alumi_pipelines.resources.lake import Lake


class DriftConfig(Config):
    recent_batches: int = Field(default=1, ge=1, description="how many of the newest processed batches to compare")
    threshold_share: float = Field(
        default_factory=lambda: float(os.environ.get("ALUMI_DRIFT_SHARE", "0.5")), gt=0, le=1,
        description="the check fails when at least this share of features drifted (env ALUMI_DRIFT_SHARE)",
    )
    max_rows: int = Field(default=5000, ge=1000, description="rows per side given to evidently (bounded sample)")


@asset(
    deps=["processed_images", "gold_dataset"],
    group_name="drift",
    owners=["team:data-science"],
    kinds={"evidently", "html"},
    description="Evidently data-drift report of per-image features (brightness, contrast, sharpness, colour "
    "statistics, size) of the newest processed batches against the champion's training split, on a bounded "
    "sample; HTML and JSON in reports/drift/, latest.json for drift_sensor.",
    check_specs=[
        AssetCheckSpec(
            "image_feature_drift",
            asset="image_drift_report",
            description="Fails when the share of drifted image features (brightness, contrast, sharpness, colour, "
            "size) of the newest batches against the champion's training set reaches the threshold. Failing "
            "means production images no longer look like what the model learned from: drift_sensor then "
            "requests a retraining run.",
        )
    ],
)
def image_drift_report(context: AssetExecutionContext, config: DriftConfig, lake: Lake):
    from alumi_pipelines.lib.drift import feature_drift

    reference, current, reference_name, batches = layout.drift_inputs(lake, config.recent_batches)
    result = feature_drift(reference, current, max_rows=config.max_rows, threshold_share=config.threshold_share)
    summary = {**result.summary(), "batches": batches, "reference": reference_name}
    report_id = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()[:16]
    latest = layout.write_drift_report(lake, report_id, result.html, summary)
    drifted = ", ".join(result.drifted_columns) or "none"
    context.log.info(f"drift share {result.drift_share:.2f} ({drifted}) for {', '.join(batches)} vs {reference_name}")
    yield MaterializeResult(
        metadata={
            "drift_share": result.drift_share,
            "drifted_features": MetadataValue.text(drifted),
            "current_batches": MetadataValue.text(", ".join(batches)),
            "reference": MetadataValue.text(reference_name),
            "rows_compared": MetadataValue.text(f"{result.reference_sampled} reference / {result.current_sampled} current"),
            "report_html": MetadataValue.path(lake.uri(latest["html"])),
            "report_json": MetadataValue.path(lake.uri(latest["json"])),
        }
    )
    yield AssetCheckResult(
        check_name="image_feature_drift",
        passed=result.passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "drift_share": result.drift_share,
            "threshold_share": config.threshold_share,
            "drifted_features": MetadataValue.text(drifted),
            "report": MetadataValue.path(lake.uri(latest["html"])),
            "report_id": report_id,
        },
    )
