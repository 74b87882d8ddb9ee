"""Evaluation of a defect-risk model on hold-out parts, and the baselines it must beat.

``evaluate_risk`` scores a model per defect type (ROC-AUC, PR-AUC, Brier, calibration, mean feature
contributions, plus PNG plots); ``evaluate_baselines`` fits the majority-class and best single-threshold
rule baselines on the train days and scores them on the test days; ``margins_over_baselines`` compares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from alumi_pipelines.lib.plant.dataset import DEFECT_TYPES, DaySplit, target_column
from alumi_pipelines.lib.plant.metrics import (
    average_precision,
    brier_score,
    expected_calibration_error,
    reliability_table,
    roc_auc,
    roc_curve,
)
from alumi_pipelines.lib.plant.plots import plot_contributions, plot_reliability, plot_roc
from alumi_pipelines.lib.plant.risk_model import RiskModel, feature_matrix, model_feature_names

if TYPE_CHECKING:
    import polars as pl


def _targets(frame: pl.DataFrame, defect_type: str) -> np.ndarray:
    column = target_column(defect_type)
    if column not in frame.columns:
        raise KeyError(f"evaluation frame: missing target column {column!r}")
    return frame[column].to_numpy().astype(np.float64)


def _macro(per_type: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    values = [v[key] for v in per_type.values() if v.get(key) is not None]
    return float(np.mean(values)) if values else None


def evaluate_risk(model: RiskModel, test: pl.DataFrame, n_bins: int = 10) -> dict[str, Any]:
    """Metrics per defect type and macro averages on (hold-out) parts, plus PNG plots.

    Returns {"n_parts", "per_type": {type: {positives, prevalence, roc_auc, pr_auc, brier, ece,
    reliability, mean_abs_contribution}}, "macro": {roc_auc, pr_auc, brier}, "plots": {roc,
    reliability, contributions: PNG bytes}}. Everything but "plots" is JSON-serialisable.
    """
    if test.height == 0:
        raise ValueError("evaluate_risk: no parts to evaluate")
    matrix = feature_matrix(test, model.feature_names)
    risks = model.predict_proba(matrix)
    contribs = model.contributions(matrix)
    per_type, curves = {}, {}
    for t in model.defect_types:
        y, p = _targets(test, t), risks[t]
        table = reliability_table(y, p, n_bins)
        mean_abs = np.abs(contribs[t][:, :-1]).mean(axis=0)
        order = np.argsort(-mean_abs, kind="stable")
        per_type[t] = {
            "positives": int(y.sum()),
            "prevalence": float(y.mean()),
            "roc_auc": roc_auc(y, p),
            "pr_auc": average_precision(y, p),
            "brier": brier_score(y, p),
            "ece": expected_calibration_error(table),
            "reliability": table,
            "mean_abs_contribution": {model.feature_names[i]: float(mean_abs[i]) for i in order},
        }
        curves[t] = roc_curve(y, p)
    result = {
        "n_parts": int(test.height),
        "per_type": per_type,
        "macro": {k: _macro(per_type, k) for k in ("roc_auc", "pr_auc", "brier")},
    }
    result["plots"] = {
        "roc": plot_roc(curves, per_type),
        "reliability": plot_reliability(per_type),
        "contributions": plot_contributions(per_type),
    }
    return result


def best_threshold_rule(matrix: np.ndarray, y: np.ndarray, feature_names: Sequence[str]) -> dict[str, Any]:
    """The single feature, direction and threshold with the best F1 on these rows (missing = not firing)."""
    y = np.asarray(y).astype(bool)
    best = {"feature": None, "direction": ">", "threshold": math.inf, "f1": 0.0}
    levels = np.linspace(0.01, 0.99, 99)
    for j, name in enumerate(feature_names):
        x = matrix[:, j]
        finite = x[~np.isnan(x)]
        if finite.size == 0:
            continue
        thresholds = np.unique(np.quantile(finite, levels))
        with np.errstate(invalid="ignore"):
            for direction in (">", "<"):
                fires = (x[:, None] > thresholds[None, :]) if direction == ">" else (x[:, None] < thresholds[None, :])
                tp = (fires & y[:, None]).sum(axis=0)
                predicted = fires.sum(axis=0)
                f1 = np.where(predicted + y.sum() > 0, 2 * tp / np.maximum(predicted + y.sum(), 1), 0.0)
                k = int(np.argmax(f1))
                if f1[k] > best["f1"]:
                    best = {
                        "feature": name,
                        "direction": direction,
                        "threshold": float(thresholds[k]),
                        "f1": float(f1[k]),
                    }
    return best


def _apply_rule(rule: Mapping[str, Any], matrix: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    if rule["feature"] is None:
        return np.zeros(len(matrix))
    x = matrix[:, list(feature_names).index(rule["feature"])]
    with np.errstate(invalid="ignore"):
        fires = x > rule["threshold"] if rule["direction"] == ">" else x < rule["threshold"]
    return fires.astype(np.float64)


def evaluate_baselines(dataset: pl.DataFrame, split: DaySplit) -> dict[str, Any]:
    """Majority-class and best single-threshold-rule baselines, fitted on train days, scored on test days.

    The majority baseline scores every part with the train prevalence; the rule's score is 1 where it
    fires and 0 elsewhere. Same metric names as evaluate_risk, under "majority" and "threshold_rule".
    """
    train, test = split.rows(dataset, "train"), split.rows(dataset, "test")
    if train.height == 0 or test.height == 0:
        raise ValueError(f"evaluate_baselines: {train.height} train and {test.height} test rows; both must be > 0")
    names = model_feature_names()
    x_train, x_test = feature_matrix(train, names), feature_matrix(test, names)
    majority, rules = {}, {}
    for t in DEFECT_TYPES:
        y_train, y_test = _targets(train, t), _targets(test, t)
        prevalence = float(y_train.mean())
        constant = np.full(len(y_test), prevalence)
        majority[t] = {
            "predicted_class": int(prevalence >= 0.5),
            "score": prevalence,
            "roc_auc": roc_auc(y_test, constant),
            "pr_auc": average_precision(y_test, constant),
            "brier": brier_score(y_test, constant),
        }
        rule = best_threshold_rule(x_train, y_train, names)
        fires = _apply_rule(rule, x_test, names)
        rules[t] = {
            "rule": {k: rule[k] for k in ("feature", "direction", "threshold")},
            "train_f1": rule["f1"],
            "roc_auc": roc_auc(y_test, fires),
            "pr_auc": average_precision(y_test, fires),
            "brier": brier_score(y_test, fires),
        }
    return {
        "majority": {"per_type": majority, "macro": {k: _macro(majority, k) for k in ("roc_auc", "pr_auc", "brier")}},
        "threshold_rule": {"per_type": rules, "macro": {k: _macro(rules, k) for k in ("roc_auc", "pr_auc", "brier")}},
    }


def margins_over_baselines(evaluation: Mapping[str, Any], baselines: Mapping[str, Any]) -> dict[str, float | None]:
    """Model macro PR-AUC and ROC-AUC minus each baseline's (positive = the model is better)."""
    out: dict[str, float | None] = {}
    for name in ("majority", "threshold_rule"):
        for metric in ("pr_auc", "roc_auc"):
            model_value, base_value = evaluation["macro"][metric], baselines[name]["macro"][metric]
            out[f"{metric}_vs_{name}"] = None if None in (model_value, base_value) else model_value - base_value
    return out
