"""The drift report on an Azure lake: a time-limited read-only SAS link anyone can open, and the same HTML in MLflow;
the processed batch's pictures are drawn from the object store too."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import drift, gold, processed, raw
from alumi_pipelines.assets.raw import write_landing_file
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.settings import DEFAULT_CLASSES

pytestmark = pytest.mark.azure

ASSETS = [raw.raw_ingestion, processed.processing, gold.gold_dataset, drift.image_drift_report]


def test_the_drift_report_link_is_a_sas_url_an_anonymous_get_downloads(azure_lake, tmp_path):
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    settings = PipelineSettings(
        classes=list(DEFAULT_CLASSES), image_size=160, workers=2, cache_dir=str(tmp_path / "cache")
    )
    registry = MlflowRegistry(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlflow" / "artifacts"),
    )
    resources = {"lake": azure_lake, "pipeline_settings": settings, "mlflow": registry}
    instance = DagsterInstance.ephemeral()
    write_landing_batch(
        lambda key, data: write_landing_file(azure_lake, "day-1", key, data),
        "day-1",
        24,
        day=dt.date(2026, 11, 1),
        seed=0,
        size=192,
    )
    instance.add_dynamic_partitions(landing_batches.name, ["day-1"])
    ingested = materialize(
        ASSETS,
        instance=instance,
        partition_key="day-1",
        resources=resources,
        selection=["raw_images", "raw_labels", "processed_images", "processed_labels"],
    )
    assert ingested.success
    (images,) = [e for e in ingested.get_asset_materialization_events() if e.asset_key.path == ["processed_images"]]
    assert "data:image/png;base64," in images.materialization.metadata["samples"].value
    assert materialize(ASSETS, instance=instance, resources=resources, selection=["gold_dataset"]).success

    config = {"ops": {"image_drift_report": {"config": {"report_link_hours": 2}}}}
    result = materialize(
        ASSETS, instance=instance, resources=resources, selection=["image_drift_report"], run_config=config
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    latest = azure_lake.read_json(lake_keys.DRIFT_LATEST)
    html = azure_lake.read_bytes(latest["html"])
    assert html.lstrip()[:15].lower() in (b"<!doctype html>", b"<html>") or b"<html" in html[:200].lower()

    url = meta["report"].value
    assert url.startswith(("http://", "https://")) and "sp=r" in url and "sig=" in url
    assert latest["report_id"] in url.split("?")[0]
    downloaded = httpx.get(url, timeout=60)  # no credential: the link alone
    assert downloaded.status_code == 200 and downloaded.content == html
    assert httpx.get(url.split("?")[0], timeout=60).status_code in (401, 403, 404)  # without the signature: refused
    valid = meta["report_link"].value
    assert valid.startswith("read-only link, valid 2 h (until ") and valid.endswith(" UTC)")
    assert meta["report_path"].value == azure_lake.uri(latest["html"])

    (check,) = result.get_asset_check_evaluations()
    assert check.metadata["report"].value.startswith(url.split("?")[0])

    run_id = meta["mlflow_run_id"].value
    assert meta["mlflow_run"].value.startswith("experiment alumi-drift, run " + run_id)
    local = registry.client().download_artifacts(run_id, f"report/{latest['report_id']}.html", str(tmp_path))
    assert open(local, "rb").read() == html
