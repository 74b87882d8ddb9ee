"""``defect_risk_champion`` (group ``plant_risk``): the registry alias ``champion`` of ``alumi-defect-risk``
moves to a challenger that passed ``risk_promotion_gate``, and :func:`publish_risk_champion` writes the
champion's document to models/risk/champion/ for the edge release.

The champion stage refuses to promote without a passing verdict for the latest evaluation.
"""

import datetime as dt
import hashlib
import json

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from alumi_pipelines.assets.plant.risk_evaluation import defect_risk_evaluation, latest_risk_evaluation
from alumi_pipelines.assets.plant.risk_model import GROUP, risk_model_bytes, risk_registry
from alumi_pipelines.assets.promotion import passing_verdict, promote
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import CHAMPION, MlflowRegistry


@asset(
    deps=[defect_risk_evaluation],
    group_name=GROUP,
    owners=["team:data-science"],
    kinds={"mlflow", "json"},
    description="The registry alias 'champion' of 'alumi-defect-risk' on the evaluated challenger (the old "
    "champion keeps 'previous'), and its JSON at models/risk/champion/risk_model.json for the edge release "
    "(role risk_model). Runs only after the risk promotion gate passed.",
)
def defect_risk_champion(context: AssetExecutionContext, lake: Lake, mlflow: MlflowRegistry) -> MaterializeResult:
    registry = risk_registry(mlflow)
    evaluation = latest_risk_evaluation(context, lake)
    version = evaluation["challenger"]["version"]
    passing_verdict(
        lake,
        lake_keys.risk_gate_key(version),
        evaluation,
        model=f"risk model version {version}",
        check="risk_promotion_gate",
        evaluated="defect_risk_evaluation",
    )
    move, metadata = promote(context, registry, version)
    pointer = publish_risk_champion(lake, registry)
    return MaterializeResult(
        metadata={
            **metadata,
            "model_uri": pointer["model_uri"],
            "sha256": pointer["sha256"],
            "test_pr_auc_macro": evaluation["challenger"]["metrics"]["macro"]["pr_auc"],
            "edge_file": MetadataValue.path(lake.uri(lake_keys.RISK_CHAMPION_KEY)),
        }
    )


def publish_risk_champion(lake: Lake, registry: MlflowRegistry) -> dict:
    """Write the champion's JSON to models/risk/champion/ for the edge release; returns the pointer.

    The file is the registered JSON with ``info.registry`` (model name and version) added, so the edge
    server can report which version answered. Run again after ``alumi rollback`` of the risk model.
    """
    version = registry.alias_version(CHAMPION)
    if version is None:
        raise ValueError(f"model {registry.model_name!r} has no {CHAMPION!r} alias: nothing to publish")
    document = json.loads(risk_model_bytes(lake, registry, version))
    document.setdefault("info", {})["registry"] = {"model_name": registry.model_name, "version": version}
    data = json.dumps(document, separators=(",", ":")).encode("utf-8")
    lake.write_bytes(lake_keys.RISK_CHAMPION_KEY, data)
    pointer = {
        "model_name": registry.model_name,
        "version": version,
        "key": lake_keys.RISK_CHAMPION_KEY,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "model_uri": f"models:/{registry.model_name}@{CHAMPION}",
        "published_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    lake.write_json(lake_keys.RISK_CHAMPION_POINTER, pointer)
    return pointer


def champion_days(lake: Lake) -> list[str]:
    """Train and validation days of the published champion (its reference data), [] without one."""
    if not lake.exists(lake_keys.RISK_CHAMPION_KEY):
        return []
    split = json.loads(lake.read_bytes(lake_keys.RISK_CHAMPION_KEY)).get("info", {}).get("split") or {}
    return sorted(set(split.get("train_days", [])) | set(split.get("val_days", [])))
