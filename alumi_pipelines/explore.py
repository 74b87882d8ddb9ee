"""The project from a notebook or a script: lake tables as DataFrames, images, materialising assets, MLflow.

Everything goes through the same settings, resources and Definitions the Dagster code location uses, so
a notebook sees exactly what the UI shows:

    from alumi_pipelines import explore
    gold = explore.gold_dataset()          # manifest + labels of the current gold dataset
    explore.materialize(["detector_model"], config={"detector_model": {"epochs": 3}})
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alumi_pipelines.assets.gold import read_gold_pointer, read_version
from alumi_pipelines.assets.processed import read_processed
from alumi_pipelines.assets.training.champion import champion_record
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.settings import Settings


@dataclass
class GoldView:
    dataset_hash: str
    classes: list[str]
    counts: dict[str, int]
    manifest: Any  # polars DataFrame: image_id, split, file, label_file, width, height, n_boxes, classes
    labels: Any  # polars DataFrame: canonical labels with their split


def settings() -> Settings:
    return Settings.from_env()


def resources() -> dict:
    from alumi_pipelines.resources import build_resources

    return build_resources(settings())


def lake():
    return resources()["lake"]


def gold_dataset() -> GoldView:
    """The current gold dataset (gold/current.json) as DataFrames."""
    store = lake()
    pointer = read_gold_pointer(store)
    manifest, labels = read_version(store, pointer["prefix"])
    return GoldView(
        dataset_hash=pointer["dataset_hash"],
        classes=list(pointer["classes"]),
        counts=dict(pointer["counts"]),
        manifest=manifest,
        labels=labels,
    )


def processed_labels(batches: Sequence[str] | None = None):
    """The canonical label table (processed zone) of some or all batches."""
    return read_processed(lake(), list(batches) if batches else None)[1]


def image_features(batches: Sequence[str] | None = None):
    """Per-image features (brightness, contrast, sharpness, colour, size) of some or all batches."""
    return read_processed(lake(), list(batches) if batches else None)[0]


def load_image(image_id: str):
    """A processed image as a BGR numpy array."""
    import cv2
    import numpy as np

    data = lake().read_bytes(lake_keys.processed_image_key(image_id))
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def draw_boxes(image, boxes, names: Sequence[str] | None = None, *, normalised: bool = True, color=(0, 200, 255)):
    """Draw boxes on a copy of a BGR image.

    ``boxes``: rows with class_name and either x_center/y_center/width/height (normalised) or
    x1/y1/x2/y2 (pixels, ``normalised=False``), plus an optional confidence.
    """
    import cv2

    out = image.copy()
    h, w = out.shape[:2]
    for box in boxes:
        if normalised:
            x1, y1 = (box["x_center"] - box["width"] / 2) * w, (box["y_center"] - box["height"] / 2) * h
            x2, y2 = (box["x_center"] + box["width"] / 2) * w, (box["y_center"] + box["height"] / 2) * h
        else:
            x1, y1, x2, y2 = box["x1"], box["y1"], box["x2"], box["y2"]
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, color, 1 if max(h, w) < 400 else 2)
        label = box.get("class_name", "")
        if box.get("confidence") is not None:
            label += f" {box['confidence']:.2f}"
        cv2.putText(out, label, (p1[0], max(10, p1[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA)
    return out


def materialize(selection: Sequence[str], config: dict | None = None, partition_key: str | None = None):
    """Materialise assets of the code location (their upstream already in the lake) on the Dagster instance
    of DAGSTER_HOME, so the runs show in the UI; ``config`` maps asset name → its config."""
    from dagster import AssetKey, DagsterInstance

    from alumi_pipelines.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    run_config = {"ops": {name: {"config": value} for name, value in (config or {}).items()}}
    with DagsterInstance.get() as instance:
        return job.execute_in_process(
            run_config=run_config,
            instance=instance,
            partition_key=partition_key,
            asset_selection=[AssetKey(name) for name in selection],
            raise_on_error=False,
        )


def mlflow_runs(max_results: int = 20):
    """The detector experiment's runs (newest first) as a pandas DataFrame."""
    registry = resources()["mlflow"]
    import mlflow

    mlflow.set_tracking_uri(registry.tracking_uri)
    return mlflow.search_runs(
        experiment_ids=[registry.experiment_id()], max_results=max_results, order_by=["attributes.start_time DESC"]
    )


def champion() -> dict | None:
    """The registry's champion as mirrored in the lake (version, dataset hash, run id)."""
    return champion_record(lake())
