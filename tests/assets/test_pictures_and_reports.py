"""Pictures in asset metadata (processed batch, gold version, quarantine) and the drift report as a link a browser
opens plus an MLflow artifact, on real CR7-DET images through Dagster's materialize."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pytest
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import drift, gold, processed, raw
from alumi_pipelines.cli import import_dataset
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

CR7_CLASSES = ["inclusions", "dents", "oil_spots", "pits", "punching", "linear", "macular"]
ASSETS = [raw.raw_ingestion, processed.processing, gold.gold_dataset, drift.image_drift_report]
PER_CLASS = 8


def inline_png(markdown: str) -> np.ndarray:
    """The image of a metadata entry written by ``metadata.png_md``, decoded."""
    match = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:200]
    data = base64.b64decode(match.group(1))
    assert len(data) < 300_000
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] >= 160 and image.shape[1] >= 160
    assert float(image.std()) > 20  # not a blank panel
    return image


def has_colour(image: np.ndarray, bgr: tuple[int, int, int], at_least: int = 30) -> bool:
    return int((image == np.array(bgr, np.uint8)).all(axis=2).sum()) >= at_least


@pytest.fixture
def cr7_subset(cr7_dir: Path, tmp_path: Path) -> Path:
    """Eight images of every class of the real sample (YOLO layout), plus a file that is no image and an image
    below the minimum size, each with a label file."""
    root = tmp_path / "cr7"
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    shutil.copy(cr7_dir / "classes.txt", root / "classes.txt")
    for prefix in ("dents", "inclusions", "linear", "macular", "oil spots", "pits", "punching"):
        for image in sorted((cr7_dir / "image").glob(f"{prefix}[0-9]*.jpg"))[:PER_CLASS]:
            shutil.copy(image, root / "image" / image.name)
            shutil.copy(cr7_dir / "label" / f"{image.stem}.txt", root / "label" / f"{image.stem}.txt")
    (root / "image" / "notes.jpg").write_bytes(b"shift notes, not an image")
    cv2.imwrite(str(root / "image" / "speck.jpg"), np.full((20, 20, 3), 200, np.uint8))
    for name in ("notes", "speck"):
        (root / "label" / f"{name}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    return root


def test_processed_gold_and_quarantine_show_pictures_and_the_drift_report_opens(lake, cr7_subset, tmp_path):
    settings = PipelineSettings(classes=CR7_CLASSES, image_size=256, min_image_side=32, workers=2)
    registry = MlflowRegistry(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlflow" / "artifacts"),
        model_name="alumi-detector-test",
        ui_url="http://mlflow.example:5000",
    )
    resources = {"lake": lake, "pipeline_settings": settings, "mlflow": registry}
    instance = DagsterInstance.ephemeral()
    import_dataset(lake, cr7_subset, "yolo", "cr7-a", CR7_CLASSES)
    instance.add_dynamic_partitions(landing_batches.name, ["cr7-a"])

    def ingest():
        return materialize(
            ASSETS,
            instance=instance,
            partition_key="cr7-a",
            resources=resources,
            selection=["raw_images", "raw_labels", "processed_images", "processed_labels"],
        )

    ingested = ingest()
    assert ingested.success
    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in ingested.get_asset_materialization_events()
    }

    # processed: 12 of the batch's images with their labels; every class's colour appears (each class is covered)
    samples = meta["processed_images"]["samples"].value
    images = lake.read_table(lake_keys.processed_features_key("cr7-a")).height  # identical images are one
    assert images > 40 and samples.startswith(f"**12 of {images} images with their processed labels**")
    mosaic = inline_png(samples)
    from alumi_pipelines.lib.vision.mosaic import class_colours

    assert all(has_colour(mosaic, colour) for colour in class_colours(CR7_CLASSES).values())

    # quarantine: both rejected images are shown with their reason (both as text: neither decodes)
    rejections = lake.read_table(lake_keys.quarantine_table_key("cr7-a"))
    assert {p.rsplit("/", 1)[-1] for p in rejections["path"].to_list()} >= {"notes.jpg", "speck.jpg"}
    quarantine = meta["raw_images"]["quarantine_samples"].value
    assert f"of {rejections.height} quarantined records" in quarantine
    inline_png(quarantine)

    # the same choice of images when the batch is materialised again
    again = ingest()
    repeat = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in again.get_asset_materialization_events()
    }
    assert repeat["processed_images"]["samples"].value == samples

    # gold: one row per split
    built = materialize(ASSETS, instance=instance, resources=resources, selection=["gold_dataset"])
    assert built.success
    (gold_event,) = built.get_asset_materialization_events()
    gold_samples = gold_event.materialization.metadata["samples"].value
    assert "one row per split (train, val, test)" in gold_samples
    assert inline_png(gold_samples).shape[0] > 3 * 160

    # drift: the report as a file:// URL of the HTML in the lake, and the same HTML as an artifact of an MLflow run
    reported = materialize(ASSETS, instance=instance, resources=resources, selection=["image_drift_report"])
    assert reported.success
    (drift_event,) = reported.get_asset_materialization_events()
    drift_meta = drift_event.materialization.metadata
    latest = lake.read_json(lake_keys.DRIFT_LATEST)
    url = drift_meta["report"].value
    assert url.startswith("file://")
    opened = Path(unquote(urlparse(url).path))
    assert opened == lake.local_path(latest["html"]) and opened.suffix == ".html"
    html = opened.read_bytes()
    assert html.lstrip().lower().startswith(b"<!doctype html") or html.lstrip().lower().startswith(b"<html")
    assert drift_meta["report_path"].value == str(opened)

    run_id = drift_meta["mlflow_run_id"].value
    run = registry.client().get_run(run_id)
    experiment = registry.client().get_experiment(run.info.experiment_id)
    assert experiment.name == "alumi-drift"
    assert run.data.tags["alumi.report_id"] == latest["report_id"]
    assert run.data.tags["alumi.champion_version"] == "none"
    assert run.data.metrics["drift_share"] == latest["drift_share"]
    assert drift_meta["mlflow_run"].value == (
        f"http://mlflow.example:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    )
    artifact = Path(unquote(urlparse(drift_meta["mlflow_report"].value).path))
    assert artifact.read_bytes() == html
    assert [a.path for a in registry.client().list_artifacts(run_id, "report")] == [
        f"report/{latest['report_id']}.html"
    ]

    # the same report again: the same MLflow run, no second one
    assert materialize(ASSETS, instance=instance, resources=resources, selection=["image_drift_report"]).success
    runs = registry.client().search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
