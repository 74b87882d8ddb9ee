"""raw → processed → gold through Dagster's materialize, with bad input mixed into good batches."""

import json

import cv2
import numpy as np
import polars as pl
import yaml
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import gold, processed, raw
from alumi_pipelines.lib import training
from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys

ASSETS = [
    raw.raw_ingestion,
    processed.processing,
    gold.gold_dataset,
    gold.no_split_leakage,
    gold.splits_cover_classes,
    gold.identical_images_label_conflicts,
]


def _run(instance, lake, settings, selection, partition=None, tags=None):
    result = materialize(
        ASSETS,
        instance=instance,
        partition_key=partition,
        selection=selection,
        tags=tags,
        resources={"lake": lake, "pipeline_settings": settings},
    )
    assert result.success
    return result


def _ingest(instance, lake, settings, batch):
    instance.add_dynamic_partitions(landing_batches.name, [batch])
    return _run(instance, lake, settings, ["raw_images", "raw_labels", "processed_images", "processed_labels"], batch)


def _spoil(lake, batch):
    """Add a zero-byte image, a truncated image, a text file named .png and a sidecar with bad boxes."""
    prefix = f"landing/{batch}/L1/cam-a"
    meta = {"line_id": "L1", "camera_id": "cam-a", "captured_at": "2026-11-01T10:00:00+00:00"}
    good = lake.list_files(prefix)
    png = next(f.key for f in good if f.key.endswith(".png"))
    data = lake.read_bytes(png)
    lake.write_bytes(f"{prefix}/zero.png", b"")
    lake.write_bytes(f"{prefix}/zero.json", json.dumps({**meta, "image": "zero.png", "boxes": []}).encode())
    lake.write_bytes(f"{prefix}/cut.png", data[: len(data) // 2])
    lake.write_bytes(f"{prefix}/cut.json", json.dumps({**meta, "image": "cut.png", "boxes": []}).encode())
    lake.write_bytes(f"{prefix}/notes.png", b"operator notes, not an image")
    lake.write_bytes(f"{prefix}/notes.json", json.dumps({**meta, "image": "notes.png", "boxes": []}).encode())
    img = cv2.imencode(".png", np.full((100, 100, 3), 90, np.uint8))[1].tobytes()
    lake.write_bytes(f"{prefix}/badbox.png", img)
    lake.write_bytes(
        f"{prefix}/badbox.json",
        json.dumps(
            {
                **meta,
                "image": "badbox.png",
                "width": 100,
                "height": 100,
                "boxes": [
                    {"class_name": "scratch", "x_center": 0.5, "y_center": 0.5, "width": 0.2, "height": 0.2},
                    {"class_name": "scratch", "x_center": 1.7, "y_center": 0.5, "width": 0.2, "height": 0.2},
                    {"class_name": "unicorn", "x_center": 0.5, "y_center": 0.5, "width": 0.2, "height": 0.2},
                ],
            }
        ).encode(),
    )


def test_bad_files_are_quarantined_and_good_data_flows(lake, settings, write_batch):
    instance = DagsterInstance.ephemeral()
    summary = write_batch("day-1", n=12)
    _spoil(lake, "day-1")
    result = _ingest(instance, lake, settings, "day-1")

    manifest = lake.read_table(lake_keys.raw_manifest_key("day-1"))
    assert manifest.height == 12 + 1  # the 12 good images and badbox.png
    rejections = lake.read_table(lake_keys.quarantine_table_key("day-1"))
    by_path = {
        r["path"].rsplit("/", 1)[-1]: r["reason"] for r in rejections.iter_rows(named=True) if r["stage"] == "image"
    }
    assert set(by_path) == {"zero.png", "cut.png", "notes.png"}
    assert (
        "empty" in by_path["zero.png"] and "truncated" in by_path["cut.png"] and "not an image" in by_path["notes.png"]
    )
    label_reasons = rejections.filter(pl.col("stage") != "image")["reason"].to_list()
    assert any("unicorn" in r for r in label_reasons) and len(label_reasons) >= 2
    assert lake.read_bytes("quarantine/day-1/files/L1/cam-a/zero.png") == b""

    labels = lake.read_table(lake_keys.processed_labels_key("day-1"))
    assert labels.height == summary["boxes"] + 1  # the one good box of badbox.png
    features = lake.read_table(lake_keys.processed_features_key("day-1"))
    assert features.height == 13 and features["width"].max() <= 160

    mat = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert mat["raw_images"]["quarantined"].value == len(rejections)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"labels_valid": True, "images_valid": True}


def test_rerun_gives_identical_content_and_new_day_leaves_old_untouched(lake, settings, write_batch):
    instance = DagsterInstance.ephemeral()
    write_batch("day-1", n=10, seed=1)
    _ingest(instance, lake, settings, "day-1")
    keys = [
        "raw/manifests/day-1.parquet",
        "raw/labels/day-1.parquet",
        "processed/features/day-1.parquet",
        "processed/labels/day-1.parquet",
    ]
    before = {k: lake.read_bytes(k) for k in keys}
    _ingest(instance, lake, settings, "day-1")
    assert {k: lake.read_bytes(k) for k in keys} == before

    write_batch("day-2", n=10, seed=2)
    mtimes = {f.key: f.mtime for f in lake.list_files("processed")}
    _ingest(instance, lake, settings, "day-2")
    after = {f.key: f.mtime for f in lake.list_files("processed")}
    assert all(after[k] == t for k, t in mtimes.items())  # day-1 outputs not rewritten
    assert lake.exists("processed/features/day-2.parquet")


def test_gold_dataset_layout_split_hash_and_checks(lake, settings, write_batch, tmp_path):
    instance = DagsterInstance.ephemeral()
    write_batch("day-1", n=30, seed=5)
    write_batch("day-2", n=30, seed=6)
    for b in ("day-1", "day-2"):
        _ingest(instance, lake, settings, b)
    # the same image dropped again in a third batch, with a different label: one image, a conflict
    first = lake.list_files("landing/day-1/L1/cam-a")
    png = next(f.key for f in first if f.key.endswith(".png"))
    sidecar = json.loads(lake.read_bytes(png[:-4] + ".json"))
    sidecar["boxes"] = [{"class_name": "stain", "x_center": 0.3, "y_center": 0.3, "width": 0.1, "height": 0.1}]
    lake.write_bytes("landing/day-3/L1/cam-a/again.png", lake.read_bytes(png))
    lake.write_bytes("landing/day-3/L1/cam-a/again.json", json.dumps({**sidecar, "image": "again.png"}).encode())
    lake.write_bytes("landing/day-3/_batch.json", json.dumps({"batch_id": "day-3", "format": "alumi"}).encode())
    _ingest(instance, lake, settings, "day-3")

    result = _run(instance, lake, settings, ["gold_dataset"])
    pointer = lake.read_json(lake_keys.GOLD_POINTER)
    manifest, plan_labels = gold.read_version(lake, pointer["prefix"])
    assert manifest.height == 60 and manifest["image_id"].n_unique() == 60
    assert sum(pointer["counts"].values()) == 60 and pointer["conflicts"] == 1
    # a manifest, labels and data.yaml: no image copied into the version's folder, no list file (staging writes them)
    assert sorted(f.key.rsplit("/", 1)[1] for f in lake.list_files(pointer["prefix"])) == [
        "data.yaml",
        "labels.parquet",
        "manifest.parquet",
    ]
    for row in manifest.iter_rows(named=True):  # each row names its processed image and that image's sha256
        assert row["image_key"] == lake_keys.processed_image_key(row["image_id"])
        data = lake.read_bytes(row["image_key"])
        assert sha256_hex(data) == row["sha256"] and len(data) == row["bytes"]
    data_yaml = yaml.safe_load(lake.read_bytes(f"{pointer['prefix']}/data.yaml"))
    assert data_yaml["test"] == "test.txt" and data_yaml["names"][0] == "scratch"
    listed = sorted(f"./{f}" for f in manifest.filter(pl.col("split") == "test")["file"])
    assert listed and all(f.startswith("./images/test/") and f.endswith(".jpg") for f in listed)

    # staged for training: a YOLO folder of links to the lake's images, label files from the label table
    cache = settings.model_copy(update={"cache_dir": str(tmp_path / "cache")}).cache()
    root = gold.stage_gold(lake, pointer["prefix"], tmp_path / "work", cache=cache)
    for row in manifest.iter_rows(named=True):
        assert (root / row["file"]).read_bytes() == lake.read_bytes(row["image_key"])
        assert (root / row["file"]).stat().st_ino == lake.local_path(row["image_key"]).stat().st_ino  # no copy
        txt = (root / row["label_file"]).read_text()
        assert (
            len(txt.splitlines()) == row["n_boxes"] == plan_labels.filter(pl.col("image_id") == row["image_id"]).height
        )
    assert (root / "test.txt").read_text().splitlines() == listed
    assert yaml.safe_load((root / "data.yaml").read_text())["test"] == "test.txt"
    assert training.check_yolo_dataset(root).images == pointer["counts"]
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["no_split_leakage"] and checks["splits_cover_classes"]
    assert checks["identical_images_label_conflicts"] is False  # warns about the conflicting copy

    # same content again → same hash, folder reused
    _run(instance, lake, settings, ["gold_dataset"])
    assert lake.read_json(lake_keys.GOLD_POINTER)["dataset_hash"] == pointer["dataset_hash"]


def test_batch_without_marker_fails_with_a_clear_error(lake, settings, write_batch):
    write_batch("day-1", n=2)
    lake.delete("landing/day-1/_batch.json")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, ["day-1"])
    result = materialize(
        ASSETS,
        instance=instance,
        partition_key="day-1",
        selection=["raw_images", "raw_labels"],
        resources={"lake": lake, "pipeline_settings": settings},
        raise_on_error=False,
    )
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    failure = error.cause.message if error.cause else error.message
    assert "landing/day-1/_batch.json" in failure and "missing" in failure
