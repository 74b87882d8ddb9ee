"""``defect_risk_evaluation`` (group ``plant_risk``) and its blocking check ``risk_promotion_gate``: the newest
risk model version (challenger) and the champion on the hold-out days, against two baselines.

The evaluation record goes to models/risk/evaluations/<version>.json (and the challenger's MLflow run). The gate
is declared like the detector's ``promotion_gate``: a separate blocking check that reads the record of the latest
evaluation (:func:`latest_risk_evaluation`) and writes its verdict next to it (rule: ``lib.plant.risk_gate``),
where ``defect_risk_champion`` reads it.
"""

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any, Optional

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from alumi_pipelines.assets.metadata import md_table, png_md
from alumi_pipelines.assets.plant.risk_dataset import dataset_hash, read_risk_dataset
from alumi_pipelines.assets.plant.risk_model import GROUP, defect_risk_model, risk_model_bytes, risk_registry
from alumi_pipelines.assets.records import latest_record
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import CHAMPION, MlflowRegistry


class RiskEvaluationConfig(Config):
    version: Optional[str] = Field(default=None, description="challenger version; default: the newest version")
    n_bins: int = Field(default=10, description="reliability diagram bins")


class RiskGateConfig(Config):
    baseline_margin: float = Field(default=0.05, description="macro PR-AUC and ROC-AUC must beat each baseline by this")
    tolerance: float = Field(
        default=0.01,
        description="challenger macro PR-AUC may trail the champion's by this "
        "much (negative: it must beat the champion by that much)",
    )


@asset(
    deps=[defect_risk_model],
    group_name=GROUP,
    owners=["team:data-science"],
    kinds={"xgboost", "mlflow"},
    description="The newest risk model version (challenger) and the champion scored on the hold-out days: "
    "ROC-AUC, PR-AUC, Brier score and reliability (calibration) per defect type, XGBoost's own per-feature "
    "contributions, plots; compared with a majority-class and a best single-threshold baseline. The record is "
    "kept at models/risk/evaluations/<version>.json and logged to the challenger's MLflow run.",
)
def defect_risk_evaluation(
    context: AssetExecutionContext, config: RiskEvaluationConfig, lake: Lake, mlflow: MlflowRegistry
) -> MaterializeResult:
    from alumi_pipelines.lib.plant.evaluation import evaluate_baselines, margins_over_baselines

    registry = risk_registry(mlflow)
    info = registry.version(config.version) if config.version else registry.latest_version()
    if info is None:
        raise Failure(f"model {registry.model_name!r} has no registered version: materialise defect_risk_model first")
    version, champion_version = info.version, registry.alias_version(CHAMPION)
    dataset, split = read_risk_dataset(lake)
    test = split.rows(dataset, "test")
    challenger, plots = _evaluate(lake, registry, version, test, config.n_bins)
    baselines = evaluate_baselines(dataset, split)
    margins = margins_over_baselines(challenger, baselines)
    champion, overlap = None, []
    if champion_version is not None and champion_version != version:
        champion, _ = _evaluate(lake, registry, champion_version, test, config.n_bins)
        trained = champion["trained_on"]
        overlap = sorted(
            {d.isoformat() for d in split.test_days} & set(trained.get("train_days", []) + trained.get("val_days", []))
        )
        if overlap:
            context.log.warning(
                f"champion v{champion_version} was trained on test day(s) {overlap}: the comparison favours it"
            )
    plot_keys = {name: lake.write_bytes(lake_keys.risk_plot_key(version, name), png) for name, png in plots.items()}
    evaluation = {
        "model_name": registry.model_name,
        "challenger": {"version": version, "run_id": info.run_id, "metrics": challenger},
        "champion": {"version": champion_version, "metrics": champion} if champion else None,
        "champion_version": champion_version,
        "challenger_is_champion": champion_version == version,
        "champion_trained_on_test_days": overlap,
        "baselines": baselines,
        "margins": margins,
        "test_days": [d.isoformat() for d in split.test_days],
        "test_parts": test.height,
        "dataset_hash": dataset_hash(lake),
        "plots": plot_keys,
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(),
        "dagster_run_id": context.run_id,
    }
    key = lake.write_json(lake_keys.risk_evaluation_key(version), evaluation)
    macro = challenger["macro"]
    registry.set_version_tags(
        version,
        {
            "metrics.test.pr_auc_macro": macro["pr_auc"],
            "metrics.test.roc_auc_macro": macro["roc_auc"],
            "evaluation_key": key,
        },
    )
    if info.run_id:
        run = registry.tracked(info.run_id)
        per_type = {
            f"test/{t}/{m}": v[m]
            for t, v in challenger["per_type"].items()
            for m in ("pr_auc", "roc_auc", "brier", "ece")
        }
        run.log_metrics(
            {f"test/{k}_macro": v for k, v in macro.items()}
            | per_type
            | {f"test/margin/{k}": v for k, v in margins.items()}
        )
        run.log_dict(evaluation, f"evaluation/{version}.json")
        with tempfile.TemporaryDirectory(prefix="alumi-risk-plots-") as tmp:
            for name, png in plots.items():
                (Path(tmp) / f"{name}.png").write_bytes(png)
                run.log_artifact(Path(tmp) / f"{name}.png", "evaluation")
    context.log.info(f"risk v{version}: test macro PR-AUC {macro['pr_auc']}, ROC-AUC {macro['roc_auc']}")
    metadata: dict[str, Any] = {
        "evaluation_key": key,
        "challenger_version": version,
        "champion_version": champion_version or "none",
        "test_days": MetadataValue.text(", ".join(evaluation["test_days"])),
        "test_parts": test.height,
        "pr_auc_macro": macro["pr_auc"],
        "roc_auc_macro": macro["roc_auc"],
        "brier_macro": macro["brier"],
        "baselines_pr_auc_macro": MetadataValue.json(
            {name: baselines[name]["macro"]["pr_auc"] for name in ("majority", "threshold_rule")}
        ),
        "margins": MetadataValue.json(margins),
        "per_type": MetadataValue.md(_per_type_md(challenger, champion, baselines)),
        "contributions": MetadataValue.md(_contributions_md(challenger)),
        "plot_roc": MetadataValue.md(png_md("ROC on the hold-out days", plots["roc"])),
        "plot_calibration": MetadataValue.md(png_md("Calibration (reliability)", plots["reliability"])),
        "plot_contributions": MetadataValue.md(png_md("Feature contributions", plots["contributions"])),
    }
    if champion:
        metadata["champion_pr_auc_macro"] = champion["macro"]["pr_auc"]
    return MaterializeResult(metadata=metadata)


@asset_check(
    asset=defect_risk_evaluation,
    name="risk_promotion_gate",
    blocking=True,
    description="The challenger may become champion: macro PR-AUC and ROC-AUC beat both baselines by the "
    "margin, and macro PR-AUC >= champion - tolerance on the same days. Failing keeps the champion.",
)
def risk_promotion_gate(
    context: AssetCheckExecutionContext, config: RiskGateConfig, lake: Lake, mlflow: MlflowRegistry
) -> AssetCheckResult:
    from alumi_pipelines.lib.plant.risk_gate import RiskGateRule, decide_risk_promotion
    from alumi_pipelines.lib.training.gate import GateDecision

    evaluation = latest_risk_evaluation(context, lake)
    rule = RiskGateRule(baseline_margin=config.baseline_margin, tolerance=config.tolerance)
    version = evaluation["challenger"]["version"]
    champion = evaluation.get("champion")
    champion_version = evaluation.get("champion_version", champion["version"] if champion else None)
    if evaluation.get("challenger_is_champion"):
        decision = GateDecision(
            True,
            [],
            [{"name": "already champion", "passed": True, "detail": f"version {version} is already the champion"}],
        )
    else:
        decision = decide_risk_promotion(
            evaluation["margins"],
            evaluation["challenger"]["metrics"]["macro"],
            champion["metrics"]["macro"] if champion else None,
            rule,
        )
    verdict = {
        "version": version,
        "champion_version": champion_version,
        "evaluation_run_id": evaluation["dagster_run_id"],
        "rule": rule.as_dict(),
        "margins": evaluation["margins"],
        **decision.as_dict(),
    }
    lake.write_json(lake_keys.risk_gate_key(version), verdict)
    risk_registry(mlflow).set_version_tags(version, {"gate.passed": str(decision.passed).lower()})
    context.log.info(f"risk promotion gate for v{version}: {decision.summary()}")
    return AssetCheckResult(
        passed=decision.passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "challenger_version": version,
            "champion_version": champion_version or "none",
            "why": MetadataValue.text(decision.summary()),
            "criteria": MetadataValue.md(decision.markdown()),
            "baseline_margin": rule.baseline_margin,
            "tolerance": rule.tolerance,
        },
    )


def latest_risk_evaluation(context, lake: Lake) -> dict:
    """The record written by the latest materialisation of defect_risk_evaluation."""
    return latest_record(context, "defect_risk_evaluation", lake, "evaluation_key")


def _evaluate(lake: Lake, registry: MlflowRegistry, version: str, test, n_bins: int) -> tuple[dict, dict]:
    """(metrics without plots, plots) of one registered version on the hold-out parts."""
    from alumi_pipelines.lib.plant.evaluation import evaluate_risk
    from alumi_pipelines.lib.plant.risk_model import RiskModel

    model = RiskModel.from_json_bytes(risk_model_bytes(lake, registry, version))
    result = evaluate_risk(model, test, n_bins=n_bins)
    plots = result.pop("plots")
    return {**result, "trained_on": model.info.get("split", {})}, plots


def _per_type_md(challenger: dict, champion: dict | None, baselines: dict) -> str:
    rows = []
    for t, m in challenger["per_type"].items():
        old = (champion or {}).get("per_type", {}).get(t, {})
        rule = baselines["threshold_rule"]["per_type"][t]
        rows.append(
            [
                t,
                m["positives"],
                m["pr_auc"],
                old.get("pr_auc"),
                baselines["majority"]["per_type"][t]["pr_auc"],
                rule["pr_auc"],
                m["roc_auc"],
                m["brier"],
                m["ece"],
            ]
        )
    header = [
        "defect type",
        "test positives",
        "PR-AUC",
        "champion PR-AUC",
        "majority PR-AUC",
        "rule PR-AUC",
        "ROC-AUC",
        "Brier",
        "ECE",
    ]
    return md_table(header, rows)


def _contributions_md(challenger: dict, top: int = 5) -> str:
    rows = []
    for t, m in challenger["per_type"].items():
        items = list(m["mean_abs_contribution"].items())[:top]
        rows.append([t, ", ".join(f"{k} ({v:.3f})" for k, v in items)])
    return md_table(["defect type", f"top {top} features by mean |contribution| (log-odds)"], rows)
