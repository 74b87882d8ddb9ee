"""A 12-batch ingestion backfill on the real daemon fans out into several runs, bounded by the run queue.

The instance is deploy/dagster.postgres.yaml on a throwaway PostgreSQL cluster (compute logs local), with its own
QueuedRunCoordinator (`dagster/backfill` limit 3) and Dagster's DefaultRunLauncher (each run a process of its own,
as each run is a pod on Kubernetes). The lake is an Azurite container. The backfill is submitted as the README
says, `alumi batches --backfill`, and `dagster-daemon run` executes it. The lake it leaves is compared byte for
byte with the lake of one ranged run over the same batches.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "azure"))

from azurite import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer, AzuriteUnavailable  # noqa: E402
from backfill_daemon import Daemon, backfill_runs, most_at_once, submit_backfill, wait_for_backfill  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BATCHES = [f"2026-10-{day:02d}" for day in range(1, 13)]
IMAGES_PER_BATCH = 4


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    server = AzuriteServer(tmp_path_factory.mktemp("azurite-fanout"))
    try:
        server.start()
    except AzuriteUnavailable as exc:
        pytest.skip(f"Azurite unavailable: {exc}")
    yield server
    server.stop()


def azure_env(azurite) -> dict[str, str]:
    return {
        "ALUMI_AZURE_ACCOUNT_NAME": ACCOUNT_NAME,
        "ALUMI_AZURE_ACCOUNT_KEY": ACCOUNT_KEY,
        "ALUMI_AZURE_ACCOUNT_URL": azurite.account_url,
    }


def land_batches(lake) -> None:
    from alumi_pipelines.assets.raw import write_landing_file
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    for i, batch in enumerate(BATCHES):
        write_landing_batch(
            lambda key, data, batch=batch: write_landing_file(lake, batch, key, data),
            batch,
            IMAGES_PER_BATCH,
            day=dt.date.fromisoformat(batch),
            seed=100 + i,
            size=96,
            created_at=dt.datetime(2026, 10, 13, tzinfo=dt.UTC),  # the marker's time: equal in both lakes
        )


def blobs(azurite, container: str) -> dict[str, bytes]:
    from azure.storage.blob import ContainerClient
    from azurite import connection_string

    with ContainerClient.from_connection_string(connection_string(azurite.account_url), container) as client:
        return {b.name: client.download_blob(b.name).readall() for b in client.list_blobs()}


@pytest.fixture
def instance_dir(tmp_path) -> Path:
    """DAGSTER_HOME with the deploy instance file as it is (queue, retries, backfill threads), compute logs local."""
    config = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    config["compute_logs"] = {
        "module": "dagster.core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(tmp_path / "compute_logs")},
    }
    # Dagster's DefaultRunLauncher with a health check of each run's worker: one process per run
    assert config["run_launcher"] == {"module": "alumi_pipelines.run_launcher", "class": "LocalRunLauncher"}
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


@pytest.mark.postgres
@pytest.mark.azure
def test_a_12_batch_backfill_fans_out_under_the_queue_limit_and_matches_one_run(
    azurite, postgres_database, instance_dir, tmp_path, monkeypatch
):
    from dagster import DagsterInstance, Definitions, load_asset_checks_from_modules, load_assets_from_modules

    from alumi_pipelines.assets import processed, raw
    from alumi_pipelines.jobs import ingestion_job
    from alumi_pipelines.partitions import landing_batches
    from alumi_pipelines.resources.azure import azure_lake
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import Settings

    queue = yaml.safe_load((instance_dir / "dagster.yaml").read_text())["run_coordinator"]["config"]
    limit = next(item["limit"] for item in queue["tag_concurrency_limits"] if item["key"] == "dagster/backfill")
    assert limit == 3

    credentials = azure_env(azurite)
    for name, value in {**credentials, **postgres_database.env}.items():
        monkeypatch.setenv(name, value)
    fanned, single = "fanout", "single"
    for container in (fanned, single):
        azurite.create_container(container)
    lakes = {c: azure_lake(f"abfs://{c}/lake", env=credentials, deferred=False) for c in (fanned, single)}
    for lake in lakes.values():
        land_batches(lake)

    # the fan-out: `alumi batches --backfill`, then the daemon, with the environment a deployment gives both
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ALUMI_", "DAGSTER_"))},
        **credentials,
        **postgres_database.env,
        "DAGSTER_HOME": str(instance_dir),
        "ALUMI_HOME": str(tmp_path / "alumi"),
        "ALUMI_LAKE_URI": f"abfs://{fanned}/lake",
        "ALUMI_IMAGE_SIZE": "64",
        "ALUMI_WORKERS": "1",
    }
    started = time.monotonic()
    backfill_id = submit_backfill(env)
    with DagsterInstance.from_config(str(instance_dir)) as instance:
        assert instance.get_dynamic_partitions(landing_batches.name) == BATCHES  # registered by the same command
        with Daemon(env, tmp_path / "daemon.log") as daemon:
            status = wait_for_backfill(instance, backfill_id, daemon, timeout_s=420)
        runs = backfill_runs(instance, backfill_id, landing_batches.name)
    elapsed = time.monotonic() - started

    per_run = 3  # ALUMI_BACKFILL_PARTITIONS_PER_RUN's default
    assert status == "COMPLETED_SUCCESS", (status, runs, daemon.tail())
    assert len(runs) == math.ceil(len(BATCHES) / per_run) >= 4
    assert {r.status for r in runs} == {"SUCCESS"}
    assert sorted(p for r in runs for p in r.partitions) == BATCHES  # every batch exactly once
    assert max(len(r.partitions) for r in runs) == per_run
    peak = most_at_once(runs)
    assert 2 <= peak <= limit, [(r.start, r.end) for r in runs]  # side by side, never more than the queue allows
    print(f"\n{len(runs)} runs, at most {peak} at once, {elapsed:.0f} s from submission to the backfill's end")

    # the reference: one run over the whole range, in process, into the other container, same settings
    for name in ("ALUMI_IMAGE_SIZE", "ALUMI_WORKERS", "ALUMI_HOME"):
        monkeypatch.setenv(name, env[name])
    settings = PipelineSettings.from_settings(Settings.from_env())
    defs = Definitions(
        assets=load_assets_from_modules([raw, processed]),
        asset_checks=load_asset_checks_from_modules([raw, processed]),
        jobs=[ingestion_job],
        resources={"lake": lakes[single], "pipeline_settings": settings},
    )
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(landing_batches.name, BATCHES)
        result = defs.resolve_job_def("ingestion_job").execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": BATCHES[0], "dagster/asset_partition_range_end": BATCHES[-1]},
        )
        assert result.success

    fanned_blobs, single_blobs = blobs(azurite, fanned), blobs(azurite, single)
    zones = {name.split("/")[1] for name in fanned_blobs}
    assert {"landing", "raw", "processed", "quarantine"} <= zones
    assert sorted(fanned_blobs) == sorted(single_blobs)
    assert [n for n in fanned_blobs if fanned_blobs[n] != single_blobs[n]] == []


def test_backfill_command_errors_are_one_line(tmp_path):
    import subprocess

    from backfill_daemon import BIN

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALUMI_", "DAGSTER_"))}
    env["ALUMI_HOME"] = str(tmp_path / "alumi")
    for args, message in [
        (["--backfill"], "alumi batches --backfill: DAGSTER_HOME is not set (it names the daemon's instance)\n"),
        (["--tags", "--backfill"], "alumi batches: --tags and --backfill exclude each other\n"),
    ]:
        proc = subprocess.run([BIN / "alumi", "batches", *args], env=env, capture_output=True, text=True, timeout=120)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", message)
