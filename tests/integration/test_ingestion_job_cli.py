"""ingestion_job through `dagster job execute`, on synthetic data written by `alumi demo-data`."""

import json
from pathlib import Path

import polars as pl
from cli_helpers import BIN, run


def test_demo_data_then_ingestion_job_cli(cli_env):
    run([BIN / "alumi", "demo-data", "--images", "8", "--days", "2", "--size", "256", "--start", "2026-11-01"], cli_env)
    tags = run([BIN / "alumi", "batches", "--tags"], cli_env).stdout.strip()
    assert json.loads(tags) == {
        "dagster/asset_partition_range_start": "day-2026-11-01",
        "dagster/asset_partition_range_end": "day-2026-11-02",
    }
    out = run(
        [BIN / "dagster", "job", "execute", "-m", "alumi_pipelines.definitions", "-j", "ingestion_job", "--tags", tags],
        cli_env,
    )
    assert "RUN_SUCCESS" in out.stdout + out.stderr
    lake = Path(cli_env["ALUMI_HOME"]) / "lake"
    for day in ("2026-11-01", "2026-11-02"):
        manifest = pl.read_parquet(lake / "raw" / "manifests" / f"day-{day}.parquet")
        assert manifest.height == 8
        features = pl.read_parquet(lake / "processed" / "features" / f"day-{day}.parquet")
        assert features.height == 8 and features["width"].max() <= 640
        assert pl.read_parquet(lake / "quarantine" / f"day-{day}" / "rejections.parquet").height == 0


def test_job_fails_non_zero_on_a_broken_batch(cli_env):
    lake = Path(cli_env["ALUMI_HOME"]) / "lake"
    batch = lake / "landing" / "broken"
    batch.mkdir(parents=True)
    (batch / "_batch.json").write_text('{"format": "pascal"}')
    tags = run([BIN / "alumi", "batches", "--tags"], cli_env).stdout.strip()
    import subprocess

    proc = subprocess.run(
        [BIN / "dagster", "job", "execute", "-m", "alumi_pipelines.definitions", "-j", "ingestion_job", "--tags", tags],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "landing/broken/_batch.json: field 'format' is 'pascal'" in proc.stdout + proc.stderr
