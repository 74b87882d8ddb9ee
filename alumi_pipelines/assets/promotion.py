"""Promotion through a gate, the same way on both branches.

A blocking ``@asset_check`` on the evaluation asset (``promotion_gate``, ``risk_promotion_gate``) writes its verdict
next to the evaluation record; the champion asset then promotes only with a passing verdict of the latest evaluation.
"""

from dagster import Failure

from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import AliasMove, MlflowRegistry


def passing_verdict(lake: Lake, verdict_key: str, evaluation: dict, *, model: str, check: str, evaluated: str) -> dict:
    """The gate's verdict for ``evaluation`` (the latest one), or Failure saying why the model may not be promoted.

    ``model`` names the version in messages ("version 3"), ``check`` the gate, ``evaluated`` the evaluation asset.
    """
    if not lake.exists(verdict_key):
        raise Failure(f"{model} has no {check} verdict ({verdict_key}): run the {check} check of {evaluated} first")
    verdict = lake.read_json(verdict_key)
    if verdict.get("evaluation_run_id") != evaluation["dagster_run_id"]:
        raise Failure(
            f"the {check} verdict of {model} belongs to an older evaluation: run the {check} check of the "
            f"latest {evaluated} first"
        )
    if not verdict.get("passed"):
        raise Failure(f"{model} did not pass {check}: {'; '.join(verdict.get('reasons', []))}")
    return verdict


def promote(context, registry: MlflowRegistry, version: str) -> tuple[AliasMove, dict]:
    """Move the ``champion`` alias to ``version`` (the old one keeps ``previous``); the move and its metadata."""
    move = registry.promote(version)
    context.log.info(
        f"{registry.model_name}: champion v{move.champion}, previous "
        f"{'v' + move.previous if move.previous else 'none'}" + ("" if move.changed else " (unchanged)")
    )
    metadata = {
        "model_name": registry.model_name,
        "champion_version": move.champion,
        "previous_version": move.previous or "none",
        "changed": move.changed,
    }
    return move, metadata
