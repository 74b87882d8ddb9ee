"""Fixtures of the process-branch tests (helpers live in process_support.py, importable from the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # process_support


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema created once (migrations take seconds)."""
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    db = tmp_path_factory.mktemp("process_mlflow_template") / "mlflow.db"
    MlflowRegistry(tracking_uri=f"sqlite:///{db}", artifact_location=str(db.parent / "artifacts")).client().search_experiments()
    return db
