"""Fixtures of the export tests: a synthetic gold dataset, a quickly trained champion in a throwaway MLflow,
one run of ``export_job`` over them, and helpers to re-run single assets or checks on the same instance."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_factory import CLASSES, FAST_CONFIG, IMGSZ, sharpen_detect_head, write_synth_gold  # noqa: E402


@dataclass
class ExportSetup:
    """The lake, registry and instance of one export run, and what that run produced."""

    root: Path
    lake: Any
    registry: Any
    instance: Any
    pointer: dict
    version: str
    run_id: str
    result: Any
    settings: Any

    def resources(self) -> dict:
        return {"lake": self.lake, "mlflow": self.registry, "pipeline_settings": self.settings}

    def materialize(
        self,
        assets: list,
        run_config: dict | None = None,
        raise_on_error: bool = True,
        selection=None,
        resources: dict | None = None,
    ):
        """Run assets (or, with ``selection``, only some of them or of their checks) again on this instance;
        ``resources`` replace some of this run's resources."""
        from dagster import materialize

        return materialize(
            assets,
            instance=self.instance,
            resources={**self.resources(), **(resources or {})},
            run_config=run_config or {},
            raise_on_error=raise_on_error,
            selection=selection,
        )

    def record(self, key: str) -> dict:
        return self.lake.read_json(key)


@pytest.fixture(scope="session")
def trained_champion(tmp_path_factory, _isolated_home):
    """A 3-epoch yolo11n at imgsz 96 on the synthetic gold (head sharpened, see export_factory), registered in a
    SQLite MLflow and made champion."""
    from alumi_pipelines.lib.training import link_yolo_dataset, resolve_training_args, train_detector
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    root = tmp_path_factory.mktemp("export")
    lake = Lake(base_uri=str(root / "lake"))
    pointer = write_synth_gold(lake)
    data_yaml = link_yolo_dataset(lake.local_path(pointer["prefix"]), root / "yolo")
    args = resolve_training_args("ci", {"epochs": 3, "imgsz": IMGSZ, "batch": 8})
    outcome = train_detector(data_yaml, args, root / "train", config_dir=_isolated_home / "ultralytics")
    registry = MlflowRegistry(
        tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        artifact_location=str(root / "mlflow" / "artifacts"),
        model_name="alumi-detector-export",
    )
    with registry.run("detector-export-test", tags={"dataset_hash": pointer["dataset_hash"]}) as run:
        weights = sharpen_detect_head(outcome.best_weights, root / "best.pt")
        run.log_artifact(weights, "weights")
        version = registry.register_weights(
            run, tags={"dataset_hash": pointer["dataset_hash"], "imgsz": IMGSZ, "mlflow_run_id": run.run_id}
        )
    registry.promote(version)
    return root, lake, registry, pointer, version, run.run_id


@pytest.fixture(scope="session")
def export_settings(_isolated_home):
    """The ``pipeline_settings`` resource of the export tests: the session's ALUMI_HOME, no release key."""
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings

    return PipelineSettings(classes=list(CLASSES), home=str(_isolated_home), profile="ci")


def run_export_job(lake, registry, settings, ops: dict):
    """``export_job`` (checks included) on a fresh ephemeral instance; returns (instance, result)."""
    from dagster import DagsterInstance, Definitions, load_asset_checks_from_modules, load_assets_from_modules

    from alumi_pipelines.assets import export, release
    from alumi_pipelines.jobs import export_job

    instance = DagsterInstance.ephemeral()
    defs = Definitions(
        assets=load_assets_from_modules([export, release]),
        asset_checks=load_asset_checks_from_modules([export, release]),
        jobs=[export_job],
        resources={"lake": lake, "mlflow": registry, "pipeline_settings": settings},
    )
    result = defs.resolve_job_def("export_job").execute_in_process(instance=instance, run_config={"ops": ops})
    return instance, result


@pytest.fixture(scope="session")
def export_run(trained_champion, export_settings) -> ExportSetup:
    """``export_job`` executed once end to end (checks included) on the trained champion."""
    root, lake, registry, pointer, version, run_id = trained_champion
    instance, result = run_export_job(lake, registry, export_settings, FAST_CONFIG)
    return ExportSetup(root, lake, registry, instance, pointer, version, run_id, result, export_settings)


@pytest.fixture(scope="session")
def refused_int8_run(export_run, tmp_path_factory) -> ExportSetup:
    """``export_job`` again on a copy of the export lake without its releases, with an INT8 margin no model meets
    (-1 mAP50 point, so INT8 is refused): the release must ship the FP32 model alone."""
    import shutil

    from alumi_pipelines.resources.lake import Lake

    copy = tmp_path_factory.mktemp("refused") / "lake"
    shutil.copytree(export_run.root / "lake", copy, ignore=shutil.ignore_patterns("releases"))
    lake = Lake(base_uri=str(copy))
    ops = {**FAST_CONFIG, "onnx_int8_model": {"config": {**FAST_CONFIG["onnx_int8_model"]["config"], "margin": -1.0}}}
    instance, result = run_export_job(lake, export_run.registry, export_run.settings, ops)
    r = export_run
    return ExportSetup(r.root, lake, r.registry, instance, r.pointer, r.version, r.run_id, result, r.settings)


@pytest.fixture(scope="session")
def ultralytics_dir(_isolated_home) -> Path:
    """The session's offline ultralytics config folder."""
    return _isolated_home / "ultralytics"
