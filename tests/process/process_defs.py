"""A code location holding only the process branch, for `dagster job execute -f` (lake and MLflow from ALUMI_*)."""

from dagster import Definitions

from alumi_pipelines.assets.process_data import PROCESS_ASSETS, PROCESS_CHECKS, PROCESS_JOBS
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
from alumi_pipelines.settings import Settings

_settings = Settings.from_env()

defs = Definitions(
    assets=PROCESS_ASSETS,
    asset_checks=PROCESS_CHECKS,
    jobs=PROCESS_JOBS,
    resources={"lake": Lake(base_uri=_settings.lake_uri), "mlflow": MlflowRegistry.from_settings(_settings)},
)
