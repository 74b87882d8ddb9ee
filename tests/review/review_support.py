"""What the review tests share: the test lake's classes and edge frames, a champion trained on it, and the
handle the tests run assets through."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLASSES = ("scratch", "dent", "pit")
SIZE = 192
EDGE_BATCH = "edge-jetson-07-20261120T083000Z-5e7a9c01"
EDGE_REASONS = (["flagged"], ["uncertain"], ["rare_class", "uncertain"], ["random"])


@dataclass
class ReviewLake:
    lake: Any
    registry: Any
    settings: Any
    instance: Any
    champion: str
    edge_ids: list[str]

    def resources(self, label_studio) -> dict:
        return {
            "lake": self.lake,
            "mlflow": self.registry,
            "pipeline_settings": self.settings,
            "label_studio": label_studio,
        }

    def materialize(self, selection: list[str], label_studio, run_config: dict | None = None) -> dict:
        from dagster import materialize

        from alumi_pipelines.assets import corrections, gold, processed, raw, review

        result = materialize(
            [raw.raw_ingestion, processed.processing, corrections.label_corrections, gold.gold_dataset]
            + [review.review_queue, review.label_studio_tasks],
            instance=self.instance,
            selection=selection,
            resources=self.resources(label_studio),
            run_config=run_config or {},
        )
        assert result.success
        return {
            e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
        }


def write_edge_frames(lake) -> list[str]:
    """Frames as alumi-edge uploads them: unlabelled sidecars with the reasons the device kept them."""
    from alumi_pipelines.assets.raw import write_landing_file
    from alumi_pipelines.lib.files import sha256_hex
    from alumi_pipelines.lib.vision.synth import encode_image, render_image

    ids = []
    for i, reasons in enumerate(EDGE_REASONS):
        data = encode_image(render_image(500 + i, SIZE, SIZE, classes=CLASSES).image, "png")
        ids.append(sha256_hex(data))
        stem = ids[-1][:12]
        sidecar = {
            "image": f"{stem}.png",
            "line_id": "L1",
            "camera_id": "cam-a",
            "captured_at": f"2026-11-20T08:3{i}:00Z",
            "width": SIZE,
            "height": SIZE,
            "boxes": [],
            "labelled": False,
            "predictions": [],
            "model_version": "1",
            "device": "jetson-07",
            "capture_reasons": reasons,
            "image_sha256": ids[-1],
        }
        write_landing_file(lake, EDGE_BATCH, f"L1/cam-a/{stem}.png", data)
        write_landing_file(lake, EDGE_BATCH, f"L1/cam-a/{stem}.json", json.dumps(sidecar).encode())
    marker = {"format": "alumi", "classes": None, "source": "alumi-edge", "device": "jetson-07"}
    write_landing_file(lake, EDGE_BATCH, "_batch.json", json.dumps(marker).encode())
    return ids


def train_champion(lake, root: Path, home: Path):
    """A one-epoch ci model on the lake's gold whose head is sharpened (confident, varied boxes), registered in a
    SQLite MLflow and made champion."""
    from export_factory import sharpen_detect_head

    from alumi_pipelines.assets.gold import stage_gold
    from alumi_pipelines.lib.training import link_yolo_dataset, resolve_training_args, train_detector
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    pointer = lake.read_json("gold/current.json")
    staged = stage_gold(lake, pointer["prefix"], root / "stage")  # the gold version as a YOLO folder
    data_yaml = link_yolo_dataset(staged, root / "yolo")
    args = resolve_training_args("ci", {"epochs": 1, "imgsz": 96, "batch": 8})
    outcome = train_detector(data_yaml, args, root / "train", config_dir=home / "ultralytics")
    registry = MlflowRegistry(
        tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        artifact_location=str(root / "mlflow" / "artifacts"),
        model_name="alumi-detector-review",
    )
    with registry.run("review-test", tags={"dataset_hash": pointer["dataset_hash"]}) as run:
        weights = sharpen_detect_head(outcome.best_weights, root / "best.pt")
        run.log_artifact(weights, "weights")
        version = registry.register_weights(run, tags={"dataset_hash": pointer["dataset_hash"], "imgsz": 96})
    registry.promote(version)
    return registry, version
