"""ingestion_job against a Dagster instance built from deploy/dagster.postgres.yaml on a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from alumi_pipelines.assets import processed, raw
from alumi_pipelines.assets.raw import write_landing_file
from alumi_pipelines.jobs import ingestion_job
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.settings import DEFAULT_CLASSES

pytestmark = pytest.mark.postgres

DEPLOY_INSTANCE = Path(__file__).resolve().parents[2] / "deploy" / "dagster.postgres.yaml"


@pytest.fixture
def postgres_instance_dir(tmp_path, postgres_server, monkeypatch) -> Path:
    """A DAGSTER_HOME with the deploy instance file, compute logs switched to local files (no Azure here)."""
    config = yaml.safe_load(DEPLOY_INSTANCE.read_text())
    config["compute_logs"] = {
        "module": "dagster.core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(tmp_path / "compute_logs")},
    }
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name, value in postgres_server.env.items():
        monkeypatch.setenv(name, value)
    return home


def test_ingestion_job_runs_are_stored_in_postgres(postgres_instance_dir, postgres_server, tmp_path):
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    lake = Lake(base_uri=str(tmp_path / "lake"))
    summary = write_landing_batch(
        lambda key, data: write_landing_file(lake, "day-1", key, data),
        "day-1",
        8,
        day=dt.date(2026, 11, 1),
        seed=3,
        size=160,
    )
    settings = PipelineSettings(
        classes=list(DEFAULT_CLASSES), image_size=128, min_image_side=32, split_seed=0, workers=2
    )
    defs = Definitions(
        assets=load_assets_from_modules([raw, processed]),
        asset_checks=load_asset_checks_from_modules([raw, processed]),
        jobs=[ingestion_job],
        resources={"lake": lake, "pipeline_settings": settings},
    )

    with DagsterInstance.from_config(str(postgres_instance_dir)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        instance.add_dynamic_partitions(landing_batches.name, ["day-1"])
        result = defs.resolve_job_def("ingestion_job").execute_in_process(instance=instance, partition_key="day-1")
        assert result.success
        run_id = result.run_id

    # a second instance from the same file (another process: webserver, daemon) sees everything
    with DagsterInstance.from_config(str(postgres_instance_dir)) as instance:
        run = instance.get_run_by_id(run_id)
        assert (run.job_name, run.status, run.tags["dagster/partition"]) == (
            "ingestion_job",
            DagsterRunStatus.SUCCESS,
            "day-1",
        )
        assert instance.get_dynamic_partitions(landing_batches.name) == ["day-1"]
        latest = instance.get_latest_materialization_event(AssetKey("raw_images"))
        assert latest is not None and latest.run_id == run_id
        assert latest.asset_materialization.metadata["images"].value == summary["images"]

    # and the rows are really in PostgreSQL (not in a SQLite file under DAGSTER_HOME)
    with postgres_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id, pipeline_name, status FROM runs")
        assert cursor.fetchall() == [(run_id, "ingestion_job", "SUCCESS")]
        cursor.execute(
            "SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION' "
            "ORDER BY asset_key",
            (run_id,),
        )
        materialized = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s", (landing_batches.name,)
        )
        assert cursor.fetchall() == [("day-1",)]
    assert materialized == sorted(
        f'["{name}"]' for name in ("processed_images", "processed_labels", "raw_images", "raw_labels")
    )
    assert not list(postgres_instance_dir.glob("**/*.db"))
    assert lake.read_table(lake_keys.processed_features_key("day-1")).height == summary["images"]
