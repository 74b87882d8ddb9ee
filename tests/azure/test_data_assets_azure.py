"""raw → processed → gold materialised by Dagster with the lake on Azurite: the same content as on local disk."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import gold, processed, raw
from alumi_pipelines.assets.raw import write_landing_file
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.azure import azure_lake as make_azure_lake
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.settings import DEFAULT_CLASSES

pytestmark = pytest.mark.azure

ASSETS = [
    raw.raw_ingestion,
    processed.processing,
    gold.gold_dataset,
    gold.no_split_leakage,
    gold.splits_cover_classes,
    gold.identical_images_label_conflicts,
]
INGESTION = ["raw_images", "raw_labels", "processed_images", "processed_labels"]
BATCHES = {"day-1": 14, "day-2": 10}


def _run_everything(lake, cache_dir) -> dict:
    """Land two synthetic batches, ingest both partitions, build gold; returns {asset: metadata} of the last runs."""
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    settings = PipelineSettings(
        classes=list(DEFAULT_CLASSES),
        image_size=160,
        min_image_side=32,
        split_seed=0,
        workers=2,
        cache_dir=str(cache_dir),
    )
    instance = DagsterInstance.ephemeral()
    metadata = {}
    for seed, (batch, n) in enumerate(BATCHES.items()):
        write_landing_batch(
            lambda key, data, b=batch: write_landing_file(lake, b, key, data),
            batch,
            n,
            day=dt.date(2026, 11, 1 + seed),
            seed=seed,
            size=192,
        )
        instance.add_dynamic_partitions(landing_batches.name, [batch])
        result = materialize(
            ASSETS,
            instance=instance,
            partition_key=batch,
            selection=INGESTION,
            resources={"lake": lake, "pipeline_settings": settings},
        )
        assert result.success
        metadata.update(
            {
                e.asset_key.to_user_string(): e.materialization.metadata
                for e in result.get_asset_materialization_events()
            }
        )
    result = materialize(
        ASSETS, instance=instance, selection=["gold_dataset"], resources={"lake": lake, "pipeline_settings": settings}
    )
    assert result.success
    assert all(
        c.passed for c in result.get_asset_check_evaluations() if c.check_name != "identical_images_label_conflicts"
    )
    return metadata


def test_data_assets_on_azurite_match_local_disk(azure_env, container, tmp_path, no_network):
    # credentials stay EnvVars in the resource; Dagster resolves them when each run starts
    on_azure = make_azure_lake(f"abfs://{container}/lake", deferred=True, max_retries=2, retry_backoff_s=0.1)
    assert on_azure.credential.key == "ALUMI_AZURE_ACCOUNT_KEY"
    on_disk = Lake(base_uri=str(tmp_path / "lake"))
    azure_meta = _run_everything(on_azure, tmp_path / "cache")
    local_meta = _run_everything(on_disk, tmp_path / "cache")

    reader = make_azure_lake(f"abfs://{container}/lake", env=azure_env, deferred=False)
    for batch, n in BATCHES.items():
        assert reader.read_table(lake_keys.raw_manifest_key(batch)).height == n
        assert reader.read_table(lake_keys.processed_features_key(batch)).height == n
    pointer = reader.read_json(lake_keys.GOLD_POINTER)
    assert sum(pointer["counts"].values()) == sum(BATCHES.values())
    assert pointer["dataset_hash"] == on_disk.read_json(lake_keys.GOLD_POINTER)["dataset_hash"]

    # the same files with the same bytes in both lakes (the gold pointer carries a timestamp)
    azure_files = {f.key: f.size for zone in ("raw", "processed", "gold") for f in reader.list_files(zone)}
    local_files = {f.key: f.size for zone in ("raw", "processed", "gold") for f in on_disk.list_files(zone)}
    assert azure_files == {k: v for k, v in local_files.items() if k != lake_keys.GOLD_POINTER} | {
        lake_keys.GOLD_POINTER: azure_files[lake_keys.GOLD_POINTER]
    }
    manifest = gold.read_version_manifest(reader, pointer["prefix"])
    assert manifest.height == sum(BATCHES.values())
    for key in [
        lake_keys.processed_labels_key("day-1"),
        lake_keys.processed_features_key("day-2"),
        f"{pointer['prefix']}/labels.parquet",
        manifest["image_key"][0],  # a version names its processed images (no copies)
    ]:
        assert reader.read_bytes(key) == on_disk.read_bytes(key), key
    assert azure_meta["raw_images"]["quarantined"].value == local_meta["raw_images"]["quarantined"].value == 0
    assert no_network == []  # everything went to Azurite on 127.0.0.1
