"""Frames kept by an edge device land unlabelled, stay out of gold, and enter it once operator feedback about them
(edge JSONL naming the frame's sha256) is applied by label_corrections."""

import datetime as dt
import json

import polars as pl
import pytest
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import corrections, gold, processed, raw
from alumi_pipelines.assets.raw import write_landing_file
from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

CLASSES = ("scratch", "dent", "pit")
ASSETS = [raw.raw_ingestion, processed.processing, corrections.label_corrections, gold.gold_dataset]
INGESTION = ["raw_images", "raw_labels", "processed_images", "processed_labels"]
EDGE_BATCH = "edge-jetson-07-20261120T083000Z-0a1b2c3d"
SIZE = 192


def write_edge_batch(lake) -> list[bytes]:
    """Three kept frames as alumi-edge uploads them: sidecars with labelled false and the model's predictions."""
    from alumi_pipelines.lib.vision.synth import encode_image, render_image

    frames = []
    for i in range(3):
        data = encode_image(render_image(100 + i, SIZE, SIZE, classes=CLASSES).image, "png")
        frames.append(data)
        stem = f"{sha256_hex(data)[:12]}"
        predicted = {"class_id": 0, "class_name": "scratch", "confidence": 0.38, "x1": 30, "y1": 40, "x2": 90, "y2": 60}
        sidecar = {
            "image": f"{stem}.png",
            "line_id": "L1",
            "camera_id": "cam-a",
            "captured_at": f"2026-11-20T08:3{i}:00Z",
            "width": SIZE,
            "height": SIZE,
            # the third sidecar repeats the prediction as a box: still no label, labelled is false
            "boxes": []
            if i < 2
            else [{"class_name": "scratch", "x_center": 0.3, "y_center": 0.26, "width": 0.3, "height": 0.1}],
            "labelled": False,
            "predictions": [predicted],
            "model_version": "7",
            "device": "jetson-07",
            "capture_reasons": ["low_confidence"],
            "detection_id": f"req-{i:04d}",
            "image_sha256": sha256_hex(data),
        }
        write_landing_file(lake, EDGE_BATCH, f"L1/cam-a/{stem}.png", data)
        write_landing_file(lake, EDGE_BATCH, f"L1/cam-a/{stem}.json", json.dumps(sidecar).encode())
    marker = {"format": "alumi", "classes": None, "source": "alumi-edge", "device": "jetson-07"}
    write_landing_file(lake, EDGE_BATCH, "_batch.json", json.dumps(marker).encode())  # last: the batch is complete
    return frames


def test_feedback_on_an_unlabelled_edge_frame_brings_it_into_gold(lake):
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    settings = PipelineSettings(classes=list(CLASSES), image_size=160, workers=2)
    instance = DagsterInstance.ephemeral()

    def run(selection, partition=None):
        result = materialize(
            ASSETS,
            instance=instance,
            selection=selection,
            partition_key=partition,
            resources={"lake": lake, "pipeline_settings": settings},
        )
        assert result.success
        return {
            e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
        }

    write_landing_batch(
        lambda k, d: write_landing_file(lake, "day-1", k, d),
        "day-1",
        16,
        day=dt.date(2026, 11, 1),
        seed=4,
        size=SIZE,
        classes=CLASSES,
    )
    instance.add_dynamic_partitions(landing_batches.name, ["day-1", EDGE_BATCH])
    run(INGESTION, "day-1")
    run(["label_corrections", "gold_dataset"])
    labelled_only = lake.read_json(lake_keys.GOLD_POINTER)

    # the edge batch: ingested, unlabelled, no label rows, nothing quarantined, and gold does not change
    frames = write_edge_batch(lake)
    ids = [sha256_hex(f) for f in frames]
    meta = run(INGESTION, EDGE_BATCH)
    assert (meta["raw_images"]["images"].value, meta["raw_images"]["quarantined"].value) == (3, 0)
    assert meta["raw_labels"]["boxes"].value == 0
    manifest = lake.read_table(lake_keys.raw_manifest_key(EDGE_BATCH)).sort("captured_at")
    assert manifest.select("image_id", "labelled", "line_id", "camera_id").rows() == [
        (i, False, "L1", "cam-a") for i in ids
    ]
    assert lake.read_table(lake_keys.raw_labels_key(EDGE_BATCH)).is_empty()
    features = lake.read_table(lake_keys.processed_features_key(EDGE_BATCH))
    assert sorted(features["image_id"]) == sorted(ids) and not features["labelled"].any()
    assert lake.read_table(lake_keys.processed_labels_key(EDGE_BATCH)).is_empty()
    run(["label_corrections", "gold_dataset"])
    before = lake.read_json(lake_keys.GOLD_POINTER)
    assert before["dataset_hash"] == labelled_only["dataset_hash"]  # unlabelled frames are not defect-free negatives
    assert not set(ids) & set(lake.read_table(lake_keys.gold_manifest_key(before["prefix"]))["image_id"])

    # an operator marks a missed pit on the first frame; the edge syncs its feedback as JSONL
    feedback = {
        "feedback_id": "jetson-07-000001",
        "kind": "missed_defect",
        "image_sha256": ids[0],
        "box": {"x1": 100, "y1": 120, "x2": 140, "y2": 150},
        "class_name": "pit",
        "author": "op-7",
        "created_at": "2026-11-20T09:00:00Z",
        "device_id": "jetson-07",
        "model_version": "7",
        "seq": 1,
    }
    lake.write_bytes(
        lake_keys.corrections_incoming_key("edge-jetson-07-1-1.jsonl"), (json.dumps(feedback) + "\n").encode()
    )
    meta = run(["label_corrections", "gold_dataset"])
    applied = meta["label_corrections"]
    assert (applied["valid"].value, applied["rejected"].value, applied["applied"].value) == (1, 0, 1)
    changes = lake.read_table(lake_keys.CORRECTIONS_CHANGES)
    assert changes.select("image_id", "kind", "result", "before").rows() == [
        (ids[0], "missed_defect", "applied", "null")
    ]

    after = lake.read_json(lake_keys.GOLD_POINTER)
    assert after["dataset_hash"] != before["dataset_hash"]
    assert sum(after["counts"].values()) == sum(before["counts"].values()) + 1
    gold_manifest = lake.read_table(lake_keys.gold_manifest_key(after["prefix"]))
    assert gold_manifest.filter(pl.col("image_id").is_in(ids)).select("image_id", "n_boxes", "classes").rows() == [
        (ids[0], 1, "pit")
    ]
    labels = gold.read_version(lake, after["prefix"])[1].filter(pl.col("image_id") == ids[0])
    (row,) = labels.select("class_name", "x_center", "y_center", "width", "height").rows()
    assert row[0] == "pit" and row[1:] == pytest.approx((120 / SIZE, 135 / SIZE, 40 / SIZE, 30 / SIZE), abs=1e-6)
