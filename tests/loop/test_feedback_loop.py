"""Close the loop: operator feedback posted to an edge server is synced, validated, applied, and changes gold."""

import datetime as dt
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import corrections, gold, processed, raw
from alumi_pipelines.assets.raw import write_landing_file
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
import edge_support  # noqa: E402
from edge_support import ReleaseStore, auth_header, edge_settings, make_color_onnx  # noqa: E402

CLASSES = ("scratch", "dent", "pit")  # the edge test model has three classes
ASSETS = [raw.raw_ingestion, processed.processing, corrections.label_corrections, gold.gold_dataset]
BIN = Path(sys.executable).parent


def _materialize(instance, lake, settings, selection, partition=None):
    result = materialize(
        ASSETS,
        instance=instance,
        selection=selection,
        partition_key=partition,
        resources={"lake": lake, "pipeline_settings": settings},
    )
    assert result.success
    return result


@pytest.fixture
def pipeline(lake):
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    settings = PipelineSettings(classes=list(CLASSES), image_size=160, workers=2)
    write_landing_batch(
        lambda k, d: write_landing_file(lake, "day-1", k, d),
        "day-1",
        16,
        day=dt.date(2026, 11, 1),
        seed=4,
        size=192,
        classes=CLASSES,
    )
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, ["day-1"])
    _materialize(
        instance, lake, settings, ["raw_images", "raw_labels", "processed_images", "processed_labels"], "day-1"
    )
    _materialize(instance, lake, settings, ["label_corrections", "gold_dataset"])
    return instance, settings


@pytest.fixture
def edge(tmp_path, signing_keys_for_loop, monkeypatch):
    from fastapi.testclient import TestClient

    from alumi_edge.main import create_app
    from alumi_edge.pull import pull

    private_pem, public_pem = signing_keys_for_loop
    monkeypatch.setattr(edge_support, "COLOR_NAMES", CLASSES)  # the release's manifest names the lake's classes
    store = ReleaseStore(tmp_path / "releases", private_pem, tmp_path / "work")
    store.root.mkdir()
    model = make_color_onnx(tmp_path / "m" / "model.onnx", names=CLASSES)
    store.publish("1.0.0", model_path=model)
    home = tmp_path / "device"
    pull(str(store.root), home, public_pem)
    with TestClient(create_app(edge_settings(home))) as client:
        yield client, home


@pytest.fixture
def signing_keys_for_loop(tmp_path):
    from alumi_pipelines.lib.export.release import load_or_create_signing_key

    return load_or_create_signing_key(tmp_path / "keys" / "release.key")


def test_edge_feedback_changes_the_next_gold_dataset(lake, pipeline, edge):
    instance, settings = pipeline
    client, home = edge
    before = lake.read_json(lake_keys.GOLD_POINTER)
    manifest = lake.read_table(f"{before['prefix']}/manifest.parquet")
    target = manifest.row(0, named=True)
    features = lake.read_table(lake_keys.processed_features_key("day-1")).filter(
        pl.col("image_id") == target["image_id"]
    )
    width, height = features["orig_width"][0], features["orig_height"][0]

    missed = {
        "kind": "missed_defect",
        "image_sha256": target["image_id"],
        "class_name": "pit",
        "author": "op-7",
        "box": {"x1": 10, "y1": 12, "x2": 50, "y2": 40},
    }
    first = client.post("/v1/feedback", json=missed, headers={**auth_header(), "Idempotency-Key": "k-1"})
    again = client.post("/v1/feedback", json=missed, headers={**auth_header(), "Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200 and again.json()["duplicate"] is True
    unknown = {**missed, "image_sha256": "0" * 64}
    assert client.post("/v1/feedback", json=unknown, headers=auth_header()).status_code == 201

    sync = [str(BIN / "alumi-edge"), "sync", "--home", str(home), "--target", lake.base_uri]
    out = subprocess.run(sync, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    incoming = lake.list_files(lake_keys.CORRECTIONS_INCOMING)
    assert len(incoming) == 1

    result = _materialize(instance, lake, settings, ["label_corrections", "gold_dataset"])
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["label_corrections"]["valid"].value == 1 and meta["label_corrections"]["rejected"].value == 1
    rejects = lake.read_table(lake_keys.CORRECTIONS_REJECTIONS)
    assert "0000000000" in rejects["record_id"][0] or "image" in rejects["reason"][0]

    after = lake.read_json(lake_keys.GOLD_POINTER)
    assert after["dataset_hash"] != before["dataset_hash"]
    labels = gold.read_version(lake, after["prefix"])[1].filter(pl.col("image_id") == target["image_id"])
    added = labels.filter(pl.col("class_name") == "pit").filter(
        (pl.col("x_center") - 30 / width).abs() < 1e-4, (pl.col("y_center") - 26 / height).abs() < 1e-4
    )
    assert added.height == 1
    assert labels.height == target["n_boxes"] + 1

    # a second sync sends nothing, and applying the same corrections again changes nothing
    subprocess.run(sync, capture_output=True, text=True, check=True)
    assert len(lake.list_files(lake_keys.CORRECTIONS_INCOMING)) == 1
    _materialize(instance, lake, settings, ["label_corrections", "gold_dataset"])
    assert lake.read_json(lake_keys.GOLD_POINTER)["dataset_hash"] == after["dataset_hash"]
