"""The code location: assembles assets, checks, jobs, sensors, schedules and resources. Nothing else lives here.

Assets and checks are collected from the ``assets`` package (one module per asset group), each with a link
to its source file in the UI; jobs and their executor come from ``jobs``, sensors and schedules from ``sensors``.
"""

import warnings

from dagster import (
    BetaWarning,
    Definitions,
    load_asset_checks_from_package_module,
    load_assets_from_package_module,
    with_source_code_references,
)

from alumi_pipelines import assets
from alumi_pipelines.jobs import EXECUTOR, JOBS
from alumi_pipelines.resources import build_resources
from alumi_pipelines.sensors import SCHEDULES, SENSORS

with warnings.catch_warnings():  # code references are a beta API; the UI shows them, the logs need not say so
    warnings.simplefilter("ignore", BetaWarning)
    linked_assets = with_source_code_references(load_assets_from_package_module(assets))

defs = Definitions(
    assets=linked_assets,
    asset_checks=load_asset_checks_from_package_module(assets),
    jobs=JOBS,
    executor=EXECUTOR,  # None locally: the default multiprocess executor; k8s_job_executor on Kubernetes
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=build_resources(),
)
