"""Drift: features of recent production batches against the champion's training set (evidently).

``image_drift_report`` (check ``image_feature_drift``) calls :func:`drift_inputs` for the two feature sets,
``lib.drift.feature_drift`` for the verdict and :func:`write_drift_report` for ``reports/drift/``.
"""

import hashlib
import json
from pathlib import PurePosixPath
from typing import Optional

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

from alumi_pipelines.assets.gold import read_gold_pointer, read_version_manifest
from alumi_pipelines.assets.processed import read_processed
from alumi_pipelines.assets.reports import REPORT_LINK_HOURS, log_report_run, publish_report, report_links
from alumi_pipelines.assets.training.champion import champion_record
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


class DriftConfig(Config):
    recent_batches: int = Field(default=1, ge=1, description="how many of the newest processed batches to compare")
    threshold_share: Optional[float] = Field(
        default=None,
        gt=0,
        le=1,
        description="the check fails when at least this share of features drifted (default: the "
        "pipeline_settings resource's drift_share, env ALUMI_DRIFT_SHARE)",
    )
    max_rows: int = Field(default=5000, ge=1000, description="rows per side given to evidently (bounded sample)")
    report_link_hours: int = Field(
        default=REPORT_LINK_HOURS,
        ge=1,
        description="on an object-store lake, how long the report's read-only link stays valid (hours)",
    )


@asset(
    deps=["processed_images", "gold_dataset"],
    group_name="drift",
    owners=["team:data-science"],
    kinds={"evidently", "html"},
    description="Evidently data-drift report of per-image features (brightness, contrast, sharpness, colour "
    "statistics, size) of the newest processed batches against the champion's training split, on a bounded "
    "sample; HTML and JSON in reports/drift/, latest.json for drift_sensor. The report is linked as a URL a browser "
    "opens (a read-only SAS link on Azure) and logged to a run of the MLflow experiment alumi-drift.",
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
def image_drift_report(
    context: AssetExecutionContext,
    config: DriftConfig,
    lake: Lake,
    mlflow: MlflowRegistry,
    pipeline_settings: PipelineSettings,
):
    from alumi_pipelines.lib.drift import feature_drift

    threshold = config.threshold_share if config.threshold_share is not None else pipeline_settings.drift_share
    reference, current, reference_name, batches = drift_inputs(lake, config.recent_batches)
    result = feature_drift(reference, current, max_rows=config.max_rows, threshold_share=threshold)
    summary = {**result.summary(), "batches": batches, "reference": reference_name}
    report_id = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()[:16]
    latest = write_drift_report(lake, report_id, result.html, summary)
    drifted = ", ".join(result.drifted_columns) or "none"
    champion = champion_record(lake) or {}
    logged = log_report_run(
        mlflow,
        report_id,
        result.html,
        run_name=f"image drift {report_id}",
        tags={
            "alumi.report": "image_drift_report",
            "alumi.champion_version": champion.get("version") or "none",
            "alumi.champion_run_id": champion.get("run_id") or "none",
            "alumi.batches": ", ".join(batches),
            "alumi.reference": reference_name,
            "dagster_run_id": context.run_id,
        },
        metrics={"drift_share": result.drift_share, "passed": float(result.passed)},
    )
    context.log.info(f"drift share {result.drift_share:.2f} ({drifted}) for {', '.join(batches)} vs {reference_name}")
    yield MaterializeResult(
        metadata={
            "drift_share": result.drift_share,
            "drifted_features": MetadataValue.text(drifted),
            "current_batches": MetadataValue.text(", ".join(batches)),
            "reference": MetadataValue.text(reference_name),
            "rows_compared": MetadataValue.text(
                f"{result.reference_sampled} reference / {result.current_sampled} current"
            ),
            **report_links(lake, latest["html"], config.report_link_hours),
            "report_json": MetadataValue.path(lake.uri(latest["json"])),
            **logged,
        }
    )
    yield AssetCheckResult(
        check_name="image_feature_drift",
        passed=result.passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "drift_share": result.drift_share,
            "threshold_share": threshold,
            "drifted_features": MetadataValue.text(drifted),
            **report_links(lake, latest["html"], config.report_link_hours),
            "report_id": report_id,
        },
    )


# -- processed + gold → reports/drift (zone I/O) --------------------------------------------------
def drift_inputs(lake: Lake, recent_batches: int):
    """(reference features, current features, reference description, current batches).

    The reference is the train split of the champion's gold dataset (or of the current gold dataset when
    there is no champion yet); the current set is the most recently processed batches.
    """
    import polars as pl

    champion = champion_record(lake)
    pointer = read_gold_pointer(lake)
    dataset_hash = (champion or {}).get("dataset_hash") or pointer["dataset_hash"]
    prefix = lake_keys.gold_prefix(dataset_hash)
    if not lake.exists(lake_keys.gold_manifest_key(prefix)):
        dataset_hash, prefix = pointer["dataset_hash"], pointer["prefix"]
    train_ids = read_version_manifest(lake, prefix).filter(pl.col("split") == "train")["image_id"].implode()
    files = sorted(
        (f for f in lake.list_files(lake_keys.PROCESSED_FEATURES) if f.key.endswith(".parquet")),
        key=lambda f: (f.mtime, f.key),
    )
    current_batches = [PurePosixPath(f.key).stem for f in files[-recent_batches:]]
    features, _ = read_processed(lake)
    reference = features.filter(pl.col("image_id").is_in(train_ids)).unique("image_id", maintain_order=True)
    current = features.filter(pl.col("batch").is_in(current_batches))
    return (
        reference,
        current,
        f"gold {dataset_hash[:12]} train split" + (" (champion)" if champion else ""),
        current_batches,
    )


def write_drift_report(lake: Lake, report_id: str, html: bytes, summary: dict) -> dict:
    """reports/drift/<id>.html + .json, then latest.json (what the drift sensor reads)."""
    latest = {"passed": summary["passed"], "drift_share": summary["drift_share"], "batches": summary.get("batches", [])}
    return publish_report(lake, lake_keys.drift_report_key, lake_keys.DRIFT_LATEST, report_id, html, summary, latest)
