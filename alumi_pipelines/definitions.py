"""The code location: assembles assets, checks, jobs, sensors and resources. Nothing else lives here."""

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from alumi_pipelines.assets import gold, processed, raw
from alumi_pipelines.jobs import JOBS
from alumi_pipelines.resources import build_resources
from alumi_pipelines.sensors.landing import landing_sensor

_modules = [raw, processed, gold]

defs = Definitions(
    assets=load_assets_from_modules(_modules),
    asset_checks=load_asset_checks_from_modules(_modules),
    jobs=JOBS,
    sensors=[landing_sensor],
    resources=build_resources(),
)
