"""Process-sensor branch: historian samples → features per part → risk dataset → XGBoost model → gate → champion.

Partitioning: ``process_days``, one UTC calendar day per partition (DailyPartitionsDefinition). The
historian exports one file per day and line, so a day is the natural unit of new data; day keys are
known in advance, so a schedule or CI can target "yesterday" or a range without registering anything,
and re-landing a day's export re-runs exactly that partition. Only finished days exist as partitions
(samples of the running day would be incomplete). A day without landing files materialises empty
tables and says so in its metadata, so a backfill across non-production days does not fail.

``process_sensor_raw`` and ``process_sensor_features`` are partitioned; everything downstream reads
every day in the lake and is unpartitioned. Checks are declared with their assets (``check_specs``) so
each stage is one step. Exports ``PROCESS_ASSETS``, ``PROCESS_CHECKS`` (empty: every check is a check
spec of its asset) and ``PROCESS_JOBS`` (``process_risk_job`` over a day range; the unpartitioned
``process_retraining_job`` for the drift sensor). Resources: ``lake`` (Lake) and ``mlflow``
(MlflowRegistry; the risk model gets its own experiment and registered model, ``alumi-defect-risk``,
on the same tracking server).
"""


import datetime as dt
import tempfile
from pathlib import Path
from typing import Any, Optional

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    BackfillPolicy,
    Config,
    DailyPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    define_asset_job,
)
from pydantic import Field

from alumi_pipelines.assets.metadata import png_md
from alumi_pipelines.resources import process_layout as layout
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import CHAMPION, MlflowRegistry

GROUP = "process"
PROCESS_START_DATE = "2024-01-01"  # first day a partition exists for; older historian days need an earlier date
process_days = DailyPartitionsDefinition(start_date=PROCESS_START_DATE, timezone="UTC")
EVALUATION_ASSET = AssetKey("defect_risk_evaluation")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.4f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _png_md(title: str, data: bytes) -> MetadataValue:
    return MetadataValue.md(png_md(title, data))


# -- raw -------------------------------------------------------------------------------------------
@asset(
    partitions_def=process_days,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    owners=["team:data-engineering"],
    kinds={"polars", "parquet"},
    description="Historian exports of a day (landing/process/<day>/*.csv) validated and normalised: tags mapped "
    "to canonical signals and units, timestamps to UTC, non-numeric values to dropouts, rows sorted per part. "
    "Rows with bad, offset-less or future timestamps, unknown part ids (against the day's production plan), "
    "implausible values or duplicates go to quarantine/process/<day>/rejects.parquet with their reason; "
    "unusable files (missing columns, unknown or wrong units) are refused whole, with the reason.",
    check_specs=[
        AssetCheckSpec(
            "process_samples_valid", asset="process_sensor_raw", blocking=True,
            description="Great Expectations suite on the clean samples: ids present, known alloys, values "
            "plausible, each signal present in at least 80% of samples, (part_id, timestamp) unique and "
            "timestamps strictly increasing per part. Failing stops the features and the model."),
        AssetCheckSpec(
            "process_sensor_quarantine", asset="process_sensor_raw", blocking=False,
            description="Warns when a historian file was refused whole or more than 5% of the rows were "
            "rejected: the quarantine needs a look."),
    ],
)
def process_sensor_raw(context: AssetExecutionContext, lake: Lake):
    from alumi_pipelines.lib.process_quality import validate_process_samples

    now = dt.datetime.now(dt.timezone.utc)
    days = list(context.partition_keys)
    results = [layout.ingest_process_day(lake, day, now) for day in days]
    reasons: dict[str, int] = {}
    file_errors: dict[str, str] = {}
    flagged: list[dict] = []
    for r in results:
        for key, n in r.reject_reasons.items():
            reasons[key] = reasons.get(key, 0) + n
        file_errors.update(r.file_errors)
        flagged += r.flagged
        for key, why in r.file_errors.items():
            context.log.warning(f"{r.day}: refused {key}: {why}")
        plan = "no production plan (part ids not checked)" if r.plan_parts is None else f"plan of {r.plan_parts} parts"
        context.log.info(f"{r.day}: {len(r.files)} files, {r.samples} samples of {r.parts} parts, "
                         f"{r.rejected} rows quarantined, {len(r.flagged)} part signals flagged; {plan}")
    samples, rejected = sum(r.samples for r in results), sum(r.rejected for r in results)
    empty_days = [r.day for r in results if not r.files]
    metadata: dict[str, Any] = {
        "days": MetadataValue.text(", ".join(days[:10]) + (" …" if len(days) > 10 else "")),
        "files": sum(len(r.files) for r in results),
        "samples": samples,
        "parts": sum(r.parts for r in results),
        "rejected_rows": rejected,
        "refused_files": len(file_errors),
        "flagged_part_signals": len(flagged),
        "reject_reasons": MetadataValue.md(_md_table(["reason", "rows"], [[k, n] for k, n in reasons.items()])
                                           if reasons else "_none_"),
        "refused": MetadataValue.md(_md_table(["file", "reason"], [[k, v] for k, v in file_errors.items()])
                                    if file_errors else "_none_"),
        "flagged": MetadataValue.md(_md_table(["part", "signal", "reason"],
                                              [[f["part_id"], f["signal"], f["reason"]] for f in flagged[:50]])
                                    if flagged else "_none_"),
        "table": MetadataValue.path(lake.uri(layout.raw_process_key(days[0]))),
        "quarantine": MetadataValue.path(lake.uri(layout.process_quarantine_prefix(days[0]))),
    }
    if len(results) == 1:
        metadata["dropout_share"] = MetadataValue.json(results[0].dropout)
    if empty_days:
        metadata["days_without_files"] = MetadataValue.text(", ".join(empty_days))
        context.log.warning(f"no historian files landed for {', '.join(empty_days)}: empty tables written")
    yield MaterializeResult(metadata=metadata)

    clean = layout.read_raw_samples(lake, days)
    suite = validate_process_samples(clean)
    yield AssetCheckResult(
        check_name="process_samples_valid", passed=suite.success, severity=AssetCheckSeverity.ERROR,
        metadata={"summary": MetadataValue.text(suite.summary()), "expectations": suite.evaluated, "rows": clean.height},
    )
    share = rejected / max(samples + rejected, 1)
    yield AssetCheckResult(
        check_name="process_sensor_quarantine", passed=not file_errors and share <= 0.05,
        severity=AssetCheckSeverity.WARN,
        metadata={"refused_files": len(file_errors), "rejected_rows": rejected, "rejected_share": round(share, 4)},
    )


# -- processed -------------------------------------------------------------------------------------
@asset(
    deps=[process_sensor_raw],
    partitions_def=process_days,
    backfill_policy=BackfillPolicy.single_run(),
    group_name=GROUP,
    owners=["team:data-engineering"],
    kinds={"polars", "parquet"},
    description="Windowed statistics per part from the day's clean samples: per signal mean, std, min, max, "
    "slope (per second), share of samples outside the operating limits and dropout share, plus duration.",
    check_specs=[
        AssetCheckSpec(
            "process_features_valid", asset="process_sensor_features", blocking=True,
            description="Great Expectations suite on the features: one row per part, ids and day present, "
            "shares in [0, 1], means plausible, spreads non-negative, min <= max."),
    ],
)
def process_sensor_features(context: AssetExecutionContext, lake: Lake):
    import polars as pl

    from alumi_pipelines.lib.process_quality import validate_process_features

    frames = []
    for day in context.partition_keys:
        features = layout.build_day_features(lake, day)
        context.log.info(f"{day}: features of {features.height} parts")
        frames.append(features)
    features = pl.concat(frames, how="vertical_relaxed")
    metadata: dict[str, Any] = {
        "parts": features.height,
        "table": MetadataValue.path(lake.uri(layout.process_features_key(context.partition_keys[0]))),
    }
    if features.height:
        metadata["mean_duration_s"] = round(float(features["duration_s"].mean()), 1)
        metadata["parts_per_alloy"] = MetadataValue.json(dict(features.group_by("alloy").len().sort("alloy").iter_rows()))
    yield MaterializeResult(metadata=metadata)
    suite = validate_process_features(features)
    yield AssetCheckResult(
        check_name="process_features_valid", passed=suite.success, severity=AssetCheckSeverity.ERROR,
        metadata={"summary": MetadataValue.text(suite.summary()), "expectations": suite.evaluated, "rows": features.height},
    )


# -- gold ------------------------------------------------------------------------------------------
class RiskDatasetConfig(Config):
    val_days: int = Field(default=1, description="days before the hold-out days that validate (early stopping, calibration)")
    test_days: int = Field(default=1, description="newest days held out for evaluation")


@asset(
    deps=[process_sensor_features],
    group_name=GROUP,
    owners=["team:data-science"],
    kinds={"polars", "parquet"},
    description="Features of every day joined per part with inspection outcomes: the QA station's outcomes.csv "
    "of each landing day, and where processed images carry a part_id, defect counts from the vision branch's "
    "labels (for parts the QA station did not report). Binary target per defect type; split by day (the newest "
    "days held out). Parts the join cannot match (no outcome, unknown part id, bad counts) are listed with the "
    "reason in gold/process/unmatched.parquet, never silently dropped.",
    check_specs=[
        AssetCheckSpec(
            "risk_dataset_splits", asset="defect_risk_dataset", blocking=True,
            description="Train, validation and test days each hold parts, and every defect type has positive "
            "training parts. Failing means a model trained now could not learn or be evaluated."),
        AssetCheckSpec(
            "risk_dataset_unmatched", asset="defect_risk_dataset", blocking=False,
            description="Warns about outcomes for unknown part ids, unreadable outcome files or bad counts."),
    ],
)
def defect_risk_dataset(context: AssetExecutionContext, config: RiskDatasetConfig, lake: Lake):
    import polars as pl

    from alumi_pipelines.lib.process_features import DEFECT_TYPES

    try:
        built = layout.build_risk_dataset(lake, val_days=config.val_days, test_days=config.test_days)
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    unmatched = built.unmatched
    by_reason = unmatched.group_by("side", "reason").len().sort("side", "len", descending=[False, True])
    unknown = unmatched.filter(pl.col("reason").str.contains("no sensor features"))["part_id"].to_list()
    for key, why in built.outcome_errors.items():
        context.log.warning(f"refused {key}: {why}")
    if unknown:
        context.log.warning(f"{len(unknown)} outcome part ids have no sensor features, e.g. {unknown[:5]}")
    split = built.split
    positives = [[t] + [built.positives[s][t] for s in ("train", "val", "test")] for t in DEFECT_TYPES]
    yield MaterializeResult(metadata={
        "parts": built.dataset.height,
        "days": len(split.train_days) + len(split.val_days) + len(split.test_days),
        **{f"{s}_parts": n for s, n in built.counts.items()},
        "split_days": MetadataValue.json(split.to_dict()),
        "positives": MetadataValue.md(_md_table(["defect type", "train", "val", "test"], positives)),
        "unmatched_parts": unmatched.height,
        "unknown_part_ids": len(unknown),
        "unknown_part_id_examples": MetadataValue.text(", ".join(unknown[:10]) or "none"),
        "unmatched_reasons": MetadataValue.md(
            _md_table(["side", "reason", "parts"], [list(r) for r in by_reason.iter_rows()])
            if unmatched.height else "_none_"),
        "outcome_file_errors": MetadataValue.md(
            _md_table(["file", "reason"], [[k, v] for k, v in built.outcome_errors.items()])
            if built.outcome_errors else "_none_"),
        "vision_outcomes": MetadataValue.text(built.vision_note),
        "dataset_hash": built.dataset_hash,
        "table": MetadataValue.path(lake.uri(layout.RISK_DATASET_KEY)),
        "unmatched": MetadataValue.path(lake.uri(layout.RISK_UNMATCHED_KEY)),
    })
    empty = [s for s, n in built.counts.items() if n == 0]
    untrainable = [t for t in DEFECT_TYPES if built.positives["train"][t] == 0]
    yield AssetCheckResult(
        check_name="risk_dataset_splits", passed=not empty and not untrainable, severity=AssetCheckSeverity.ERROR,
        metadata={"empty_splits": MetadataValue.text(", ".join(empty) or "none"),
                  "types_without_train_positives": MetadataValue.text(", ".join(untrainable) or "none")},
    )
    bad_counts = unmatched.filter(pl.col("side") == "outcomes").height - len(unknown)
    yield AssetCheckResult(
        check_name="risk_dataset_unmatched", passed=not unknown and not built.outcome_errors and bad_counts == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"unknown_part_ids": len(unknown), "outcome_file_errors": len(built.outcome_errors),
                  "bad_outcome_rows": bad_counts},
    )


# -- model -----------------------------------------------------------------------------------------
class RiskTrainingConfig(Config):
    """XGBoost parameters; unset fields keep lib/risk_model.DEFAULT_PARAMS."""

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


def _val_metrics(model, val) -> dict[str, float]:
    """Validation PR-AUC and ROC-AUC per defect type and macro (no plots)."""
    import numpy as np

    from alumi_pipelines.lib import risk_model as rm
    from alumi_pipelines.lib.process_features import target_column

    risks = model.predict_proba(rm.feature_matrix(val, model.feature_names))
    out: dict[str, float] = {}
    for name, fn in (("pr_auc", rm.average_precision), ("roc_auc", rm.roc_auc)):
        values = []
        for t in model.defect_types:
            value = fn(val[target_column(t)].to_numpy(), risks[t])
            if value is not None:
                out[f"val/{t}/{name}"] = value
                values.append(value)
        if values:
            out[f"val/{name}_macro"] = float(np.mean(values))
    return out


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
def defect_risk_model(context: AssetExecutionContext, config: RiskTrainingConfig, lake: Lake,
                      mlflow: MlflowRegistry) -> MaterializeResult:
    from alumi_pipelines.lib import risk_model as rm

    registry = layout.risk_registry(mlflow)
    dataset, split = layout.read_risk_dataset(lake)
    data_hash = layout.dataset_hash(lake)
    try:
        model = rm.train_risk_model(dataset, split, config.params())
    except (ValueError, KeyError) as exc:
        raise Failure(f"defect_risk_model: {exc}") from exc
    data = model.to_json_bytes()
    val_metrics = _val_metrics(model, split.rows(dataset, "val"))
    per_type = model.info["per_type"]
    tags = {"dagster_run_id": context.run_id, "dataset_hash": data_hash}
    with registry.run(f"defect-risk-{context.run_id[:8]}", tags=tags) as run:
        run.log_params({**model.info["params"], "dataset_hash": data_hash,
                        **{f"{s}_days": ",".join(v) for s, v in split.to_dict().items()},
                        **{f"{s}_parts": split.rows(dataset, s).height for s in ("train", "val", "test")}})
        run.log_metrics({**val_metrics, **{f"best_iteration/{t}": f["best_iteration"] for t, f in per_type.items()}})
        with tempfile.TemporaryDirectory(prefix="alumi-risk-") as tmp:
            path = Path(tmp) / layout.RISK_MODEL_FILE
            path.write_bytes(data)
            run.log_artifact(path, layout.RISK_ARTIFACT_PATH)
        version = layout.register_risk_model(
            registry, run, description=f"trained on risk dataset {data_hash}",
            tags={**tags, "mlflow_run_id": run.run_id,
                  "metrics.val.pr_auc_macro": val_metrics.get("val/pr_auc_macro", "")},
        )
        run.set_tags({"alumi.model_version": version})
    key = lake.write_bytes(layout.risk_version_key(version), data)
    context.log.info(f"registered {registry.model_name} version {version} (run {run.run_id}), "
                     f"validation macro PR-AUC {val_metrics.get('val/pr_auc_macro')}")
    rows = [[t, f["train_positives"], f["train_parts"], round(f["scale_pos_weight"], 2), f["best_iteration"],
             val_metrics.get(f"val/{t}/pr_auc"), "; ".join(f["notes"]) or ""] for t, f in per_type.items()]
    return MaterializeResult(metadata={
        "model_name": registry.model_name,
        "model_version": version,
        "mlflow_run_id": run.run_id,
        "dataset_hash": data_hash,
        "val_pr_auc_macro": val_metrics.get("val/pr_auc_macro"),
        "val_roc_auc_macro": val_metrics.get("val/roc_auc_macro"),
        "per_type": MetadataValue.md(_md_table(
            ["defect type", "train positives", "train parts", "scale_pos_weight", "best iteration", "val PR-AUC", "notes"],
            rows)),
        "model_bytes": len(data),
        "model": MetadataValue.path(lake.uri(key)),
    })


# -- evaluation, gate, champion --------------------------------------------------------------------
class RiskEvaluationConfig(Config):
    version: Optional[str] = Field(default=None, description="challenger version; default: the newest version")
    baseline_margin: float = Field(default=0.05, description="macro PR-AUC and ROC-AUC must beat each baseline by this")
    tolerance: float = Field(default=0.01, description="challenger macro PR-AUC may trail the champion's by this "
                             "much (negative: it must beat the champion by that much)")
    n_bins: int = Field(default=10, description="reliability diagram bins")


def _evaluate(lake: Lake, registry: MlflowRegistry, version: str, test, n_bins: int) -> tuple[dict, dict]:
    """(metrics without plots, plots) of one registered version on the hold-out parts."""
    from alumi_pipelines.lib import risk_model as rm

    model = rm.RiskModel.from_json_bytes(layout.risk_model_bytes(lake, registry, version))
    result = rm.evaluate_risk(model, test, n_bins=n_bins)
    plots = result.pop("plots")
    return {**result, "trained_on": model.info.get("split", {})}, plots


def _per_type_md(challenger: dict, champion: dict | None, baselines: dict) -> str:
    rows = []
    for t, m in challenger["per_type"].items():
        old = (champion or {}).get("per_type", {}).get(t, {})
        rule = baselines["threshold_rule"]["per_type"][t]
        rows.append([t, m["positives"], m["pr_auc"], old.get("pr_auc"), baselines["majority"]["per_type"][t]["pr_auc"],
                     rule["pr_auc"], m["roc_auc"], m["brier"], m["ece"]])
    header = ["defect type", "test positives", "PR-AUC", "champion PR-AUC", "majority PR-AUC", "rule PR-AUC",
              "ROC-AUC", "Brier", "ECE"]
    return _md_table(header, rows)


def _contributions_md(challenger: dict, top: int = 5) -> str:
    rows = []
    for t, m in challenger["per_type"].items():
        items = list(m["mean_abs_contribution"].items())[:top]
        rows.append([t, ", ".join(f"{k} ({v:.3f})" for k, v in items)])
    return _md_table(["defect type", f"top {top} features by mean |contribution| (log-odds)"], rows)


@asset(
    deps=[defect_risk_model],
    group_name=GROUP,
    owners=["team:data-science"],
    kinds={"xgboost", "mlflow"},
    description="The newest risk model version (challenger) and the champion scored on the hold-out days: "
    "ROC-AUC, PR-AUC, Brier score and reliability (calibration) per defect type, XGBoost's own per-feature "
    "contributions, plots; compared with a majority-class and a best single-threshold baseline. The record is "
    "kept at models/risk/evaluations/<version>.json and logged to the challenger's MLflow run.",
    check_specs=[
        AssetCheckSpec(
            "risk_promotion_gate", asset="defect_risk_evaluation", blocking=True,
            description="The challenger may become champion: macro PR-AUC and ROC-AUC beat both baselines by the "
            "margin, and macro PR-AUC >= champion - tolerance on the same days. Failing keeps the champion."),
    ],
)
def defect_risk_evaluation(context: AssetExecutionContext, config: RiskEvaluationConfig, lake: Lake,
                           mlflow: MlflowRegistry):
    from alumi_pipelines.lib import risk_model as rm
    from alumi_pipelines.lib.gate import GateDecision
    from alumi_pipelines.lib.risk_gate import RiskGateRule, decide_risk_promotion

    registry = layout.risk_registry(mlflow)
    rule = RiskGateRule(baseline_margin=config.baseline_margin, tolerance=config.tolerance)
    info = registry.version(config.version) if config.version else registry.latest_version()
    if info is None:
        raise Failure(f"model {registry.model_name!r} has no registered version: materialise defect_risk_model first")
    version, champion_version = info.version, registry.alias_version(CHAMPION)
    dataset, split = layout.read_risk_dataset(lake)
    test = split.rows(dataset, "test")
    challenger, plots = _evaluate(lake, registry, version, test, config.n_bins)
    baselines = rm.evaluate_baselines(dataset, split)
    margins = rm.margins_over_baselines(challenger, baselines)
    champion, overlap = None, []
    if champion_version is not None and champion_version != version:
        champion, _ = _evaluate(lake, registry, champion_version, test, config.n_bins)
        trained = champion["trained_on"]
        overlap = sorted({d.isoformat() for d in split.test_days}
                         & set(trained.get("train_days", []) + trained.get("val_days", [])))
        if overlap:
            context.log.warning(f"champion v{champion_version} was trained on test day(s) {overlap}: "
                                "the comparison favours it")
    if champion_version == version:
        decision = GateDecision(True, [], [{"name": "already champion", "passed": True,
                                            "detail": f"version {version} is already the champion"}])
    else:
        decision = decide_risk_promotion(margins, challenger["macro"], champion["macro"] if champion else None, rule)
    plot_keys = {name: lake.write_bytes(layout.risk_plot_key(version, name), png) for name, png in plots.items()}
    evaluation = {
        "model_name": registry.model_name,
        "challenger": {"version": version, "run_id": info.run_id, "metrics": challenger},
        "champion": {"version": champion_version, "metrics": champion} if champion else None,
        "challenger_is_champion": champion_version == version,
        "champion_trained_on_test_days": overlap,
        "baselines": baselines,
        "margins": margins,
        "test_days": [d.isoformat() for d in split.test_days],
        "test_parts": test.height,
        "dataset_hash": layout.dataset_hash(lake),
        "plots": plot_keys,
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "dagster_run_id": context.run_id,
    }
    key = lake.write_json(layout.risk_evaluation_key(version), evaluation)
    verdict = {"version": version, "champion_version": champion_version, "evaluation_run_id": context.run_id,
               "rule": rule.as_dict(), "margins": margins, **decision.as_dict()}
    lake.write_json(layout.risk_gate_key(version), verdict)
    macro = challenger["macro"]
    registry.set_version_tags(version, {"metrics.test.pr_auc_macro": macro["pr_auc"],
                                        "metrics.test.roc_auc_macro": macro["roc_auc"], "evaluation_key": key,
                                        "gate.passed": str(decision.passed).lower()})
    if info.run_id:
        run = registry.tracked(info.run_id)
        per_type = {f"test/{t}/{m}": v[m] for t, v in challenger["per_type"].items()
                    for m in ("pr_auc", "roc_auc", "brier", "ece")}
        run.log_metrics({f"test/{k}_macro": v for k, v in macro.items()} | per_type
                        | {f"test/margin/{k}": v for k, v in margins.items()})
        run.log_dict(evaluation, f"evaluation/{version}.json")
        with tempfile.TemporaryDirectory(prefix="alumi-risk-plots-") as tmp:
            for name, png in plots.items():
                (Path(tmp) / f"{name}.png").write_bytes(png)
                run.log_artifact(Path(tmp) / f"{name}.png", "evaluation")
    context.log.info(f"risk v{version}: test macro PR-AUC {macro['pr_auc']}, ROC-AUC {macro['roc_auc']}; "
                     f"gate {decision.summary()}")
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
            {name: baselines[name]["macro"]["pr_auc"] for name in ("majority", "threshold_rule")}),
        "margins": MetadataValue.json(margins),
        "per_type": MetadataValue.md(_per_type_md(challenger, champion, baselines)),
        "contributions": MetadataValue.md(_contributions_md(challenger)),
        "plot_roc": _png_md("ROC on the hold-out days", plots["roc"]),
        "plot_calibration": _png_md("Calibration (reliability)", plots["reliability"]),
        "plot_contributions": _png_md("Feature contributions", plots["contributions"]),
    }
    if champion:
        metadata["champion_pr_auc_macro"] = champion["macro"]["pr_auc"]
    yield MaterializeResult(metadata=metadata)
    yield AssetCheckResult(
        check_name="risk_promotion_gate", passed=decision.passed, severity=AssetCheckSeverity.ERROR,
        metadata={"challenger_version": version, "champion_version": champion_version or "none",
                  "why": MetadataValue.text(decision.summary()), "criteria": MetadataValue.md(decision.markdown()),
                  "baseline_margin": rule.baseline_margin, "tolerance": rule.tolerance},
    )


def latest_risk_evaluation(context, lake: Lake) -> dict:
    """The record written by the latest materialisation of defect_risk_evaluation."""
    event = context.instance.get_latest_materialization_event(EVALUATION_ASSET)
    if event is None or event.asset_materialization is None:
        raise Failure("defect_risk_evaluation has never been materialised: no evaluation to judge")
    return lake.read_json(event.asset_materialization.metadata["evaluation_key"].value)


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
    registry = layout.risk_registry(mlflow)
    evaluation = latest_risk_evaluation(context, lake)
    version = evaluation["challenger"]["version"]
    gate_key = layout.risk_gate_key(version)
    if not lake.exists(gate_key):
        raise Failure(f"risk model version {version} has no gate verdict ({gate_key}): materialise "
                      "defect_risk_evaluation first")
    verdict = lake.read_json(gate_key)
    if verdict.get("evaluation_run_id") != evaluation["dagster_run_id"]:
        raise Failure(f"the gate verdict of risk model version {version} belongs to an older evaluation: "
                      "materialise defect_risk_evaluation again")
    if not verdict.get("passed"):
        raise Failure(f"risk model version {version} did not pass the gate: {'; '.join(verdict.get('reasons', []))}")
    move = registry.promote(version)
    pointer = layout.publish_risk_champion(lake, registry)
    context.log.info(f"{registry.model_name}: champion v{move.champion}, previous "
                     f"{'v' + move.previous if move.previous else 'none'}" + ("" if move.changed else " (unchanged)"))
    return MaterializeResult(metadata={
        "model_name": registry.model_name,
        "champion_version": move.champion,
        "previous_version": move.previous or "none",
        "changed": move.changed,
        "model_uri": pointer["model_uri"],
        "sha256": pointer["sha256"],
        "test_pr_auc_macro": evaluation["challenger"]["metrics"]["macro"]["pr_auc"],
        "edge_file": MetadataValue.path(lake.uri(layout.RISK_CHAMPION_KEY)),
    })


# -- drift -----------------------------------------------------------------------------------------
DRIFT_STATS = ("mean", "std")


class ProcessDriftConfig(Config):
    current_days: int = Field(default=1, description="newest feature days compared with the reference")
    threshold_share: float = Field(default=0.5, description="drifted when this share of feature columns drifted")
    max_rows: int = Field(default=5000, description="rows evidently sees per side (bounded sample)")


@asset(
    deps=[process_sensor_features],
    group_name=GROUP,
    owners=["team:data-science"],
    kinds={"evidently", "json"},
    description="Evidently drift of the per-part features (mean and std of every signal) of the newest days "
    "against the champion's training and validation days (before there is a champion: the earlier days). The "
    "report goes to reports/process_drift/<id>.html|json and reports/process_drift/latest.json "
    "({report_id, passed, drift_share, ...}), which the drift sensor reads to request retraining.",
    check_specs=[
        AssetCheckSpec(
            "process_feature_drift_ok", asset="process_feature_drift", blocking=False,
            description="Warns when the share of drifted feature columns reaches the threshold."),
    ],
)
def process_feature_drift(context: AssetExecutionContext, config: ProcessDriftConfig, lake: Lake):
    import polars as pl

    from alumi_pipelines.lib.drift import feature_drift
    from alumi_pipelines.lib.process_features import SIGNALS

    if config.current_days < 1:
        raise Failure(f"process_feature_drift: current_days={config.current_days}: must be at least 1")
    features = layout.read_process_features(lake)
    days = sorted({d.isoformat() for d in features["day"].to_list()})
    current_days = days[-config.current_days:]
    reference_days = [d for d in layout.champion_days(lake) if d in days and d not in current_days]
    reference_source = "champion training days"
    if not reference_days:
        reference_days, reference_source = [d for d in days if d not in current_days], "earlier days"
    if not reference_days:
        context.log.warning(f"process_feature_drift: {len(days)} day(s) of features, none left as reference")
        yield MaterializeResult(metadata={"skipped": MetadataValue.text("no reference days yet"), "days": len(days)})
        yield AssetCheckResult(check_name="process_feature_drift_ok", passed=True, severity=AssetCheckSeverity.WARN,
                               metadata={"skipped": MetadataValue.text("no reference days yet")})
        return
    day_text = pl.col("day").cast(pl.Utf8)
    reference = features.filter(day_text.is_in(reference_days))
    current = features.filter(day_text.is_in(current_days))
    wanted = [f"{s}__{stat}" for s in SIGNALS for stat in DRIFT_STATS]
    # evidently refuses a column without values on either side; such columns are named in the metadata instead
    columns = [c for c in wanted
               if reference[c].null_count() < reference.height and current[c].null_count() < current.height]
    result = feature_drift(reference, current, columns, max_rows=config.max_rows, threshold_share=config.threshold_share)
    report_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
    latest = layout.write_drift_report(lake, result, report_id=report_id, extra={
        "reference_days": reference_days, "current_days": current_days, "reference_source": reference_source,
        "columns": columns, "dagster_run_id": context.run_id,
    })
    context.log.info(f"process drift {report_id}: share {result.drift_share:.3f} "
                     f"({'passed' if result.passed else 'DRIFTED'}), drifted {result.drifted_columns}")
    yield MaterializeResult(metadata={
        "report_id": report_id,
        "drift_share": result.drift_share,
        "passed": result.passed,
        "drifted_columns": MetadataValue.text(", ".join(result.drifted_columns) or "none"),
        "skipped_columns": MetadataValue.text(", ".join(sorted(set(wanted) - set(columns))) or "none"),
        "reference": MetadataValue.text(f"{reference_source}: {', '.join(reference_days)} ({reference.height} parts)"),
        "current": MetadataValue.text(f"{', '.join(current_days)} ({current.height} parts)"),
        "report": MetadataValue.path(lake.uri(latest["html"])),
    })
    yield AssetCheckResult(
        check_name="process_feature_drift_ok", passed=result.passed, severity=AssetCheckSeverity.WARN,
        metadata={"drift_share": result.drift_share, "threshold_share": result.threshold_share,
                  "drifted_columns": MetadataValue.text(", ".join(result.drifted_columns) or "none"),
                  "report_id": report_id},
    )


process_risk_job = define_asset_job(
    "process_risk_job",
    selection=AssetSelection.groups(GROUP),
    # A refused gate or bad data fails the same way again: run retries are for infrastructure failures only.
    tags={"dagster/retry_on_asset_or_op_failure": "false"},
    description="The process-sensor branch for a range of days: historian files → raw (quarantine) → features → "
    "risk dataset → XGBoost model (MLflow) → evaluation + gate → champion alias and edge file; feature drift. "
    "Run over every landed day with the tags of `process_days_tags` (partition range start/end).",
)

process_retraining_job = define_asset_job(
    "process_retraining_job",
    selection=AssetSelection.assets(defect_risk_dataset, defect_risk_model, defect_risk_evaluation, defect_risk_champion),
    tags={"dagster/retry_on_asset_or_op_failure": "false"},
    description="Retrain the risk model on the features already in the lake: dataset → model → evaluation + gate → "
    "champion. Unpartitioned, so the drift sensor can request it without naming days.",
)

PROCESS_ASSETS = [
    process_sensor_raw,
    process_sensor_features,
    defect_risk_dataset,
    defect_risk_model,
    defect_risk_evaluation,
    defect_risk_champion,
    process_feature_drift,
]
PROCESS_CHECKS: list = []  # every check is a check spec of its asset (one step per stage)
PROCESS_JOBS = [process_risk_job, process_retraining_job]
