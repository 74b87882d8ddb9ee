"""Fixtures of the plant-branch tests (helpers live in plant_support.py, importable from the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # plant_support


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema created once (migrations take seconds)."""
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    db = tmp_path_factory.mktemp("plant_mlflow_template") / "mlflow.db"
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{db}", artifact_location=str(db.parent / "artifacts"))
    registry.client().search_experiments()
    return db
