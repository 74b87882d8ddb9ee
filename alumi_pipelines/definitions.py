"""The code location: assembles assets, checks, jobs, sensors and resources. Nothing else lives here."""

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from alumi_pipelines.assets import corrections, drift, gold, processed, raw
from alumi_pipelines.assets.export import EXPORT_ASSETS, EXPORT_CHECKS, EXPORT_JOBS
from alumi_pipelines.assets.process_data import PROCESS_ASSETS, PROCESS_CHECKS, PROCESS_JOBS
from alumi_pipelines.assets.training import TRAINING_ASSETS, TRAINING_CHECKS, TRAINING_JOBS
from alumi_pipelines.jobs import JOBS
from alumi_pipelines.resources import build_resources
from alumi_pipelines.sensors.corrections import corrections_sensor
from alumi_pipelines.sensors.drift import drift_sensor, weekly_drift_schedule
from alumi_pipelines.sensors.landing import landing_sensor

_modules = [raw, processed, corrections, gold, drift]

defs = Definitions(
    assets=[*load_assets_from_modules(_modules), *TRAINING_ASSETS, *EXPORT_ASSETS, *PROCESS_ASSETS],
    asset_checks=[*load_asset_checks_from_modules(_modules), *TRAINING_CHECKS, *EXPORT_CHECKS, *PROCESS_CHECKS],
    jobs=[*JOBS, *TRAINING_JOBS, *EXPORT_JOBS, *PROCESS_JOBS],
    sensors=[landing_sensor, corrections_sensor, drift_sensor],
    schedules=[weekly_drift_schedule],
    resources=build_resources(),
)
