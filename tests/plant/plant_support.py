"""Helpers of the plant-branch tests: simulated days, a throwaway MLflow, runs with `materialize`, results."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

DAYS = 6
PARTS_PER_DAY = 90
SEED = 0


def start_day(days: int = DAYS) -> dt.date:
    """First simulated day: the simulated days end the day before yesterday (UTC), so all lie in the past."""
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days + 1)


def make_registry(folder: Path, template: Path):
    """A throwaway MLflow (SQLite copied from the template + local artifacts) under ``folder``."""
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    db = folder / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)
    return MlflowRegistry(tracking_uri=f"sqlite:///{db}", artifact_location=str(folder / "mlflow" / "artifacts"))


def plant_definitions() -> tuple[list, list]:
    """(assets, asset checks) of the plant branch, loaded from its package like the code location does."""
    from dagster import load_asset_checks_from_package_module, load_assets_from_package_module

    from alumi_pipelines.assets import plant

    return list(load_assets_from_package_module(plant)), list(load_asset_checks_from_package_module(plant))


def run_branch(lake, registry, instance, days: list[str] | None, *, selection=None, run_config: dict | None = None):
    """Materialise the plant assets (or ``selection``) over the day range (None: unpartitioned assets only).

    Never raises on a failed step or check: the result says what happened.
    """
    from dagster import materialize

    tags = (
        {"dagster/asset_partition_range_start": min(days), "dagster/asset_partition_range_end": max(days)}
        if days
        else {}
    )
    assets, checks = plant_definitions()
    everything = assets + checks
    if registry is None:  # only stages that need no MLflow: hand over just those assets
        everything, selection = [a for a in assets if a.key.to_user_string() in selection], None
    resources = {"lake": lake} if registry is None else {"lake": lake, "mlflow": registry}
    return materialize(
        everything,
        selection=selection,
        resources=resources,
        instance=instance,
        tags=tags,
        run_config=run_config or {},
        raise_on_error=False,
    )


def check_results(result) -> dict[str, Any]:
    """check name -> AssetCheckEvaluation of a run."""
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialized(result) -> list[str]:
    """Asset keys materialised by a run (one entry per asset)."""
    return sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events()})


def metadata(result, asset: str) -> dict[str, Any]:
    """Metadata values of the last materialisation of ``asset`` in a run."""
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}
