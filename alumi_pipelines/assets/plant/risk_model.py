"""``defect_risk_model`` (group ``plant_risk``): one calibrated XGBoost classifier per defect type, logged to
MLflow and registered as a new version of ``alumi-defect-risk``.

The risk model has its own MLflow experiment and registered model, ``alumi-defect-risk``, on the detector's
tracking server (:func:`risk_registry`). :func:`register_risk_model` logs and registers a trained document (and
keeps a copy under models/risk/versions/), :func:`risk_model_bytes` reads a version back (for
``risk_evaluation`` and ``risk_champion``), and :func:`champion_days` reads the published champion's training
days (for ``feature_drift``).
"""

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from alumi_pipelines.assets.metadata import md_table
from alumi_pipelines.assets.plant.risk_dataset import dataset_hash, defect_risk_dataset, read_risk_dataset
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry, TrackedRun

GROUP = "plant_risk"
RISK_MODEL_NAME = "alumi-defect-risk"
RISK_EXPERIMENT = "alumi-defect-risk"
RISK_ARTIFACT_PATH = "risk_model"  # artifact folder of a run holding risk_model.json; a version's source
SPLITS = ("train", "val", "test")


# -- model -----------------------------------------------------------------------------------------
class RiskTrainingConfig(Config):
    """XGBoost parameters; unset fields keep lib/plant/risk_model.DEFAULT_PARAMS."""

    max_depth: Optional[int] = None
    eta: Optional[float] = None
    subsample: Optional[float] = None
    colsample_bytree: Optional[float] = None
    min_child_weight: Optional[float] = None
    num_boost_round: Optional[int] = Field(default=None, description="most boosting rounds per defect type")
    early_stopping_rounds: Optional[int] = Field(default=None, description="rounds without validation improvement")
    nthread: Optional[int] = Field(default=None, description="XGBoost threads (1 is fastest on small data)")
    seed: Optional[int] = None

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


@asset(
    deps=[defect_risk_dataset],
    group_name=GROUP,
    owners=["team:data-science"],
    kinds={"xgboost", "mlflow"},
    description="One XGBoost classifier per defect type on the train days: early stopping on the validation days "
    "(positives weighted like training's), class imbalance by scale_pos_weight, Platt calibration on the "
    "validation margin. Params, validation metrics and the model (XGBoost JSON boosters in one document) are "
    "logged to MLflow and registered as a new version of 'alumi-defect-risk'.",
)
def defect_risk_model(
    context: AssetExecutionContext, config: RiskTrainingConfig, lake: Lake, mlflow: MlflowRegistry
) -> MaterializeResult:
    from alumi_pipelines.lib.plant.risk_model import train_risk_model

    registry = risk_registry(mlflow)
    dataset, split = read_risk_dataset(lake)
    data_hash = dataset_hash(lake)
    try:
        model = train_risk_model(dataset, split, config.params())
    except (ValueError, KeyError) as exc:
        raise Failure(f"defect_risk_model: {exc}") from exc
    data = model.to_json_bytes()
    val_metrics = _val_metrics(model, split.rows(dataset, "val"))
    per_type = model.info["per_type"]
    tags = {"dagster_run_id": context.run_id, "dataset_hash": data_hash}
    with registry.run(f"defect-risk-{context.run_id[:8]}", tags=tags) as run:
        run.log_params(
            {
                **model.info["params"],
                "dataset_hash": data_hash,
                **{f"{s}_days": ",".join(v) for s, v in split.to_dict().items()},
                **{f"{s}_parts": split.rows(dataset, s).height for s in SPLITS},
            }
        )
        run.log_metrics({**val_metrics, **{f"best_iteration/{t}": f["best_iteration"] for t, f in per_type.items()}})
        version = register_risk_model(
            lake,
            registry,
            run,
            data,
            description=f"trained on risk dataset {data_hash}",
            tags={
                **tags,
                "mlflow_run_id": run.run_id,
                "metrics.val.pr_auc_macro": val_metrics.get("val/pr_auc_macro", ""),
            },
        )
        run.set_tags({"alumi.model_version": version})
    context.log.info(
        f"registered {registry.model_name} version {version} (run {run.run_id}), "
        f"validation macro PR-AUC {val_metrics.get('val/pr_auc_macro')}"
    )
    rows = [
        [
            t,
            f["train_positives"],
            f["train_parts"],
            round(f["scale_pos_weight"], 2),
            f["best_iteration"],
            val_metrics.get(f"val/{t}/pr_auc"),
            "; ".join(f["notes"]) or "",
        ]
        for t, f in per_type.items()
    ]
    header = [
        "defect type",
        "train positives",
        "train parts",
        "scale_pos_weight",
        "best iteration",
        "val PR-AUC",
        "notes",
    ]
    return MaterializeResult(
        metadata={
            "model_name": registry.model_name,
            "model_version": version,
            "mlflow_run_id": run.run_id,
            "dataset_hash": data_hash,
            "val_pr_auc_macro": val_metrics.get("val/pr_auc_macro"),
            "val_roc_auc_macro": val_metrics.get("val/roc_auc_macro"),
            "per_type": MetadataValue.md(md_table(header, rows)),
            "model_bytes": len(data),
            "model": MetadataValue.path(lake.uri(lake_keys.risk_version_key(version))),
        }
    )


def _val_metrics(model, val) -> dict[str, float]:
    """Validation PR-AUC and ROC-AUC per defect type and macro (no plots)."""
    import numpy as np

    from alumi_pipelines.lib.plant.dataset import target_column
    from alumi_pipelines.lib.plant.metrics import average_precision, roc_auc
    from alumi_pipelines.lib.plant.risk_model import feature_matrix

    risks = model.predict_proba(feature_matrix(val, model.feature_names))
    out: dict[str, float] = {}
    for name, fn in (("pr_auc", average_precision), ("roc_auc", roc_auc)):
        values = []
        for t in model.defect_types:
            value = fn(val[target_column(t)].to_numpy(), risks[t])
            if value is not None:
                out[f"val/{t}/{name}"] = value
                values.append(value)
        if values:
            out[f"val/{name}_macro"] = float(np.mean(values))
    return out


# -- MLflow registry and the lake's copies (zone I/O) ----------------------------------------------
def risk_registry(mlflow: MlflowRegistry) -> MlflowRegistry:
    """The detector's MLflow resource, pointed at the risk model's experiment and registered model."""
    return MlflowRegistry(
        tracking_uri=mlflow.tracking_uri,
        artifact_location=mlflow.artifact_location,
        experiment_name=RISK_EXPERIMENT,
        model_name=RISK_MODEL_NAME,
    )


def register_risk_model(
    lake: Lake,
    registry: MlflowRegistry,
    run: TrackedRun,
    data: bytes,
    *,
    tags: Mapping[str, Any],
    description: str = "",
) -> str:
    """Log a risk model document to the run's ``risk_model/`` folder, register that folder as a new version and
    keep a copy at models/risk/versions/<version>/; returns the version number."""
    with tempfile.TemporaryDirectory(prefix="alumi-risk-") as tmp:
        path = Path(tmp) / lake_keys.RISK_MODEL_FILE
        path.write_bytes(data)
        run.log_artifact(path, RISK_ARTIFACT_PATH)
    version = registry.register_folder(
        run,
        RISK_ARTIFACT_PATH,
        tags=tags,
        description=description,
        model_description="Defect risk per part from plant sensors: one calibrated XGBoost booster per defect type",
    )
    lake.write_bytes(lake_keys.risk_version_key(version), data)
    return version


def risk_model_bytes(lake: Lake, registry: MlflowRegistry, version: str) -> bytes:
    """The JSON of a registered version: the lake's copy, else downloaded from MLflow."""
    key = lake_keys.risk_version_key(version)
    if lake.exists(key):
        return lake.read_bytes(key)
    info = registry.version(version)
    with tempfile.TemporaryDirectory(prefix="alumi-risk-") as tmp:
        return registry.download_uri(f"{info.source}/{lake_keys.RISK_MODEL_FILE}", Path(tmp)).read_bytes()


def champion_days(lake: Lake) -> list[str]:
    """Train and validation days of the published champion (its reference data), [] without one."""
    if not lake.exists(lake_keys.RISK_CHAMPION_KEY):
        return []
    split = json.loads(lake.read_bytes(lake_keys.RISK_CHAMPION_KEY)).get("info", {}).get("split") or {}
    return sorted(set(split.get("train_days", [])) | set(split.get("val_days", [])))
