"""Darkened and blurred images land in a new batch → the drift check fails → drift_sensor asks for retraining."""

import datetime as dt
import json

from dagster import DagsterInstance, SkipReason, build_sensor_context, materialize

from alumi_pipelines.assets import drift, gold, processed, raw
from alumi_pipelines.assets.raw import write_landing_file
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.sensors.drift import drift_sensor

ASSETS = [raw.raw_ingestion, processed.processing, gold.gold_dataset, drift.image_drift_report]


def _land(lake, batch, seed, day, **kwargs):
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    write_landing_batch(
        lambda k, d: write_landing_file(lake, batch, k, d),
        batch,
        kwargs.pop("n", 24),
        day=dt.date(2026, 11, day),
        seed=seed,
        size=160,
        **kwargs,
    )


def test_dark_blurred_batch_fails_drift_and_requests_retraining(lake, tmp_path):
    settings = PipelineSettings(classes=["scratch", "dent", "pit", "crack", "stain"], image_size=160, workers=2)
    mlflow = MlflowRegistry(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "mlflow-artifacts")
    )
    resources = {"lake": lake, "pipeline_settings": settings, "mlflow": mlflow}
    instance = DagsterInstance.ephemeral()

    def ingest(batch):
        instance.add_dynamic_partitions(landing_batches.name, [batch])
        assert materialize(
            ASSETS,
            instance=instance,
            partition_key=batch,
            resources=resources,
            selection=["raw_images", "raw_labels", "processed_images", "processed_labels"],
        ).success

    def drift_run():
        result = materialize(ASSETS, instance=instance, resources=resources, selection=["image_drift_report"])
        assert result.success  # a failed drift check is reported, it does not fail the run
        (check,) = result.get_asset_check_evaluations()
        return check, lake.read_json(lake_keys.DRIFT_LATEST)

    for i, batch in enumerate(("day-1", "day-2")):
        _land(lake, batch, seed=i, day=i + 1, n=40)
        ingest(batch)
    assert materialize(ASSETS, instance=instance, resources=resources, selection=["gold_dataset"]).success

    _land(lake, "day-3", seed=7, day=3)
    ingest("day-3")
    check, latest = drift_run()
    assert check.passed and latest["passed"] and latest["batches"] == ["day-3"]
    assert b"<!DOCTYPE html>" in lake.read_bytes(latest["html"])[:200]

    tick = drift_sensor(build_sensor_context(instance=instance, resources=resources))
    assert not tick.run_requests
    cursor = tick.cursor

    _land(lake, "day-4", seed=8, day=4, condition="dark", lines=("L1",))
    _land(lake, "day-4", seed=9, day=4, condition="blurred", lines=("L3",))
    ingest("day-4")
    check, latest = drift_run()
    assert not check.passed and not latest["passed"]
    assert latest["drift_share"] >= 0.5 and latest["batches"] == ["day-4"]
    summary = lake.read_json(latest["json"])
    assert {"brightness", "sharpness"} <= set(summary["drifted_columns"])

    tick = drift_sensor(build_sensor_context(instance=instance, cursor=cursor, resources=resources))
    assert [r.job_name for r in tick.run_requests] == ["retraining_job"]
    assert tick.run_requests[0].tags["alumi/drift_report"] == latest["report_id"]
    again = drift_sensor(build_sensor_context(instance=instance, cursor=tick.cursor, resources=resources))
    assert not again.run_requests and json.loads(again.cursor) == json.loads(tick.cursor)
    assert isinstance(again.skip_reason, SkipReason)
