"""A code location holding only the plant branch, for `dagster job execute -f` (lake and MLflow from ALUMI_*)."""

from dagster import Definitions, load_asset_checks_from_package_module, load_assets_from_package_module

from alumi_pipelines.assets import plant
from alumi_pipelines.jobs import plant_retraining_job, plant_risk_job
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
from alumi_pipelines.settings import Settings

_settings = Settings.from_env()

defs = Definitions(
    assets=load_assets_from_package_module(plant),
    asset_checks=load_asset_checks_from_package_module(plant),
    jobs=[plant_risk_job, plant_retraining_job],
    resources={"lake": Lake(base_uri=_settings.lake_uri), "mlflow": MlflowRegistry.from_settings(_settings)},
)
