"""``champion_model``: the registry alias ``champion`` moves to a challenger that passed the promotion gate.

The champion is mirrored in the lake (``models/champion.json``) so that sensors can read it without mlflow;
``alumi promote`` / ``alumi rollback`` rewrite the mirror with :func:`sync_champion_record`.
"""

import datetime as dt

from dagster import AssetExecutionContext, MaterializeResult, asset

from alumi_pipelines.assets.promotion import passing_verdict, promote
from alumi_pipelines.assets.training.evaluation import detector_evaluation, latest_evaluation
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry


@asset(
    deps=[detector_evaluation],
    group_name="training",
    owners=["team:data-science"],
    kinds={"mlflow"},
    description="The registry alias 'champion' on the evaluated challenger (the old champion keeps 'previous'); "
    "runs only after the promotion gate passed.",
)
def champion_model(context: AssetExecutionContext, lake: Lake, mlflow: MlflowRegistry) -> MaterializeResult:
    evaluation = latest_evaluation(context, lake)
    version = evaluation["challenger"]["version"]
    passing_verdict(
        lake,
        lake_keys.gate_key(version),
        evaluation,
        model=f"version {version}",
        check="promotion_gate",
        evaluated="detector_evaluation",
    )
    move, metadata = promote(context, mlflow, version)
    mlflow.set_version_tags(version, {"gate.passed": "true"})
    info = mlflow.version(move.champion)
    write_champion_record(
        lake,
        {
            "model_name": mlflow.model_name,
            "version": move.champion,
            "previous": move.previous,
            "run_id": info.run_id,
            "dataset_hash": info.tags.get("dataset_hash") or evaluation["dataset_hash"],
            "trained_at": info.created_at,
        },
    )
    return MaterializeResult(
        metadata={
            **metadata,
            "model_uri": f"models:/{mlflow.model_name}@champion",
            "test_mAP50_95": evaluation["challenger"]["metrics"]["map50_95"],
        }
    )


# -- the champion mirror in the lake ---------------------------------------------------------------
def write_champion_record(lake: Lake, record: dict) -> None:
    """The registry's champion, mirrored in the lake so sensors can read it without importing mlflow."""
    lake.write_json(lake_keys.CHAMPION_RECORD, {**record, "recorded_at": dt.datetime.now(dt.UTC).isoformat()})


def sync_champion_record(lake: Lake, registry) -> dict | None:
    """Rewrite the champion record from the registry (after `alumi promote` / `alumi rollback`)."""
    version = registry.alias_version("champion")
    if version is None:
        lake.delete(lake_keys.CHAMPION_RECORD)
        return None
    info = registry.version(version)
    record = {
        "model_name": registry.model_name,
        "version": version,
        "previous": registry.alias_version("previous"),
        "run_id": info.run_id,
        "dataset_hash": info.tags.get("dataset_hash"),
        "trained_at": info.created_at,
    }
    write_champion_record(lake, record)
    return record


def champion_record(lake: Lake) -> dict | None:
    return lake.read_json(lake_keys.CHAMPION_RECORD) if lake.exists(lake_keys.CHAMPION_RECORD) else None
