"""Fixtures for the training stage: a tiny gold dataset in a temp lake, a throwaway MLflow, a trained checkpoint."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gold_factory import TINY_CLASSES, write_tiny_gold  # noqa: E402

CI_TRAIN = {"profile": "ci", "epochs": 1, "imgsz": 64, "batch": 8, "workers": 0}


@pytest.fixture
def tiny_gold(lake):
    """The lake with a 24-image, 3-class gold dataset and its pointer; returns the pointer."""
    return write_tiny_gold(lake)


@pytest.fixture
def tiny_gold_manifest(lake):
    """The same 24-image dataset written as gold_dataset writes versions: a manifest naming processed images."""
    return write_tiny_gold(lake, layout="manifest")


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema created once (migrations take seconds)."""
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowRegistry(
        tracking_uri=f"sqlite:///{db}", artifact_location=str(db.parent / "artifacts")
    ).client().search_experiments()
    return db


@pytest.fixture
def registry(tmp_path, _empty_mlflow_db):
    """A throwaway MLflow (SQLite + local artifacts) with a test model name."""
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    shutil.copyfile(_empty_mlflow_db, db)
    return MlflowRegistry(
        tracking_uri=f"sqlite:///{db}",
        artifact_location=str(tmp_path / "mlflow" / "artifacts"),
        model_name="alumi-detector-test",
    )


@pytest.fixture
def ci_profile(monkeypatch):
    """ALUMI_PROFILE=ci for code that reads Settings."""
    monkeypatch.setenv("ALUMI_PROFILE", "ci")
    monkeypatch.delenv("ALUMI_GATE_FLOOR", raising=False)


@pytest.fixture(scope="session")
def ultralytics_config_dir(_isolated_home) -> Path:
    return Path(os.environ["YOLO_CONFIG_DIR"])


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A local YOLO folder of the tiny dataset (data.yaml with an absolute path); returns data.yaml."""
    from alumi_pipelines.lib.training import link_yolo_dataset
    from alumi_pipelines.resources.lake import Lake

    root = tmp_path_factory.mktemp("tiny_dataset")
    lake = Lake(base_uri=str(root / "lake"))
    pointer = write_tiny_gold(lake)
    return link_yolo_dataset(lake.local_path(pointer["prefix"]), root / "yolo")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, ultralytics_config_dir, tmp_path_factory) -> Path:
    """best.pt of a one-epoch ci training on the tiny dataset (trained once per session)."""
    from alumi_pipelines.lib.training import resolve_training_args, train_detector

    args = resolve_training_args("ci", {"epochs": 1})
    outcome = train_detector(tiny_dataset, args, tmp_path_factory.mktemp("ckpt"), config_dir=ultralytics_config_dir)
    return outcome.best_weights


__all__ = ["TINY_CLASSES", "CI_TRAIN", "write_tiny_gold"]
