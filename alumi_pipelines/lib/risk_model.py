"""Defect-risk model: one XGBoost binary classifier per defect type, calibrated, evaluated, explained.

Training uses the time split (train days fit the trees, validation days stop boosting early and fit a
Platt calibration of the margin); class imbalance is handled per type with ``scale_pos_weight``.
The model serialises to one JSON document that holds each booster in XGBoost's own JSON format plus
the feature names, operating limits and calibration, so an edge device can score a sensor window
with xgboost and numpy only (``risk_for_window``).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from alumi_pipelines.lib.process_features import (
    ALLOYS,
    DEFECT_TYPES,
    FEATURE_COLUMNS,
    LIMITS,
    SIGNALS,
    DaySplit,
    target_column,
    window_features_numpy,
)

if TYPE_CHECKING:
    import polars as pl

MODEL_FORMAT = "alumi-defect-risk"
MODEL_FORMAT_VERSION = 1

DEFAULT_PARAMS: dict[str, Any] = {
    "max_depth": 4,
    "eta": 0.08,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
    "lambda": 1.0,
    "num_boost_round": 400,
    "early_stopping_rounds": 40,
    "eval_metric": "logloss",
    "nthread": 1,  # the data are small: with 2 threads on a busy 2-core machine training ran 5-20x slower
    "seed": 0,
}
_BOOSTER_KEYS = (
    "max_depth", "eta", "subsample", "colsample_bytree", "min_child_weight", "lambda", "eval_metric", "nthread", "seed",
)


def model_feature_names(alloys: Sequence[str] = ALLOYS) -> tuple[str, ...]:
    """Model inputs in order: the numeric part features, then one-hot alloy columns."""
    return FEATURE_COLUMNS + tuple(f"alloy_{a}" for a in alloys)


def feature_matrix(features: "pl.DataFrame", feature_names: Sequence[str]) -> np.ndarray:
    """Model input matrix (float64, NaN = missing) from a part_features frame."""
    columns = []
    alloy = None
    for name in feature_names:
        if name.startswith("alloy_"):
            if alloy is None:
                if "alloy" not in features.columns:
                    raise KeyError("features: missing column 'alloy' (needed for the alloy one-hot inputs)")
                alloy = np.array([str(a) for a in features["alloy"].to_list()], dtype=object)
            columns.append((alloy == name[len("alloy_") :]).astype(np.float64))
        else:
            if name not in features.columns:
                raise KeyError(f"features: missing column {name!r} (a model input)")
            columns.append(np.asarray(features[name].to_numpy(), dtype=np.float64))
    return np.column_stack(columns) if columns else np.empty((features.height, 0))


def vector_from_window_features(
    features: Mapping[str, float], alloy: str | None, feature_names: Sequence[str]
) -> np.ndarray:
    """One model input row from window_features_numpy output plus the part's alloy."""
    row = []
    for name in feature_names:
        if name.startswith("alloy_"):
            row.append(1.0 if alloy is not None and str(alloy) == name[len("alloy_") :] else 0.0)
        else:
            row.append(float(features[name]))
    return np.array(row, dtype=np.float64)


# ----------------------------------------------------------------------------------------- metrics


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each distinct score's first element
    mid_rank = first_rank + (counts - 1) / 2.0
    rank_sum = mid_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    tp, fp = _counts_by_threshold(y, score)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.concatenate([[0.0], fp / n_neg]), np.concatenate([[0.0], tp / n_pos])


def _counts_by_threshold(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives when predicting positive for score >= each distinct score (descending)."""
    order = np.argsort(-score, kind="stable")
    s, yy = score[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    tp = np.cumsum(yy)[last_of_tie]
    fp = np.cumsum(~yy)[last_of_tie]
    return tp.astype(np.float64), fp.astype(np.float64)


def average_precision(y: np.ndarray, score: np.ndarray) -> float | None:
    """PR-AUC as average precision (sum of precision times recall increments); None without positives."""
    y, score = np.asarray(y).astype(bool), np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return None if n_pos == 0 else 1.0
    tp, fp = _counts_by_threshold(y, score)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier_score(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean squared difference between predicted probability and outcome."""
    return float(np.mean((np.asarray(prob, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def reliability_table(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> list[dict[str, float | int | None]]:
    """Equal-width probability bins: count, mean predicted risk and observed frequency per bin."""
    y, prob = np.asarray(y, dtype=np.float64), np.asarray(prob, dtype=np.float64)
    which = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    table = []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        table.append(
            {
                "bin_lo": b / n_bins,
                "bin_hi": (b + 1) / n_bins,
                "n": n,
                "mean_risk": float(prob[mask].mean()) if n else None,
                "observed_rate": float(y[mask].mean()) if n else None,
            }
        )
    return table


def expected_calibration_error(table: Sequence[Mapping[str, Any]]) -> float:
    """Count-weighted mean |mean risk - observed rate| over the reliability bins."""
    total = sum(row["n"] for row in table)
    if not total:
        return math.nan
    return float(sum(row["n"] * abs(row["mean_risk"] - row["observed_rate"]) for row in table if row["n"]) / total)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fit_platt(margin: np.ndarray, y: np.ndarray, fallback_offset: float = 0.0) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * margin + b) by Newton's method on Platt's smoothed targets.

    Without both classes there is nothing to fit: returns (1, fallback_offset).
    """
    margin, y = np.asarray(margin, dtype=np.float64), np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0, float(fallback_offset)
    target = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    a, b = 1.0, float(fallback_offset)
    ridge = 1e-6

    def loss(a_: float, b_: float) -> float:
        z = a_ * margin + b_
        return float(np.sum(np.logaddexp(0.0, z) - target * z) + ridge * (a_ * a_ + b_ * b_) / 2)

    current = loss(a, b)
    for _ in range(100):
        p = _sigmoid(a * margin + b)
        w = p * (1 - p)
        grad = np.array([np.sum((p - target) * margin) + ridge * a, np.sum(p - target) + ridge * b])
        hess = np.array(
            [[np.sum(w * margin * margin) + ridge, np.sum(w * margin)], [np.sum(w * margin), np.sum(w) + ridge]]
        )
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        scale = 1.0
        while scale > 1e-6:
            na, nb = a - scale * step[0], b - scale * step[1]
            new = loss(na, nb)
            if new <= current:
                break
            scale /= 2
        else:
            break
        a, b, improved = na, nb, current - new
        current = new
        if improved < 1e-10:
            break
    return float(a), float(b)


# ------------------------------------------------------------------------------------------- model


@dataclass
class RiskModel:
    """Calibrated per-defect-type boosters and everything needed to build their inputs."""

    defect_types: tuple[str, ...]
    feature_names: tuple[str, ...]
    alloys: tuple[str, ...]
    limits: dict[str, tuple[float, float]]
    boosters: dict[str, Any]  # defect type -> xgboost.Booster (trimmed to the best iteration)
    calibration: dict[str, tuple[float, float]]  # defect type -> Platt (a, b) on the margin
    info: dict[str, Any] = field(default_factory=dict)  # params, split, per-type training facts

    def predict_proba(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated risk per defect type for each row of a model input matrix."""
        import xgboost as xgb

        dmatrix = xgb.DMatrix(np.asarray(matrix, dtype=np.float64), feature_names=list(self.feature_names), missing=np.nan)
        out = {}
        for t in self.defect_types:
            a, b = self.calibration[t]
            out[t] = _sigmoid(a * self.boosters[t].predict(dmatrix, output_margin=True).astype(np.float64) + b)
        return out

    def contributions(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """XGBoost's own per-feature contributions (margin units, last column = bias) per defect type."""
        import xgboost as xgb

        dmatrix = xgb.DMatrix(np.asarray(matrix, dtype=np.float64), feature_names=list(self.feature_names), missing=np.nan)
        return {t: self.boosters[t].predict(dmatrix, pred_contribs=True) for t in self.defect_types}

    def to_json_bytes(self) -> bytes:
        """One JSON document: metadata plus each booster in XGBoost's own JSON model format."""
        document = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "defect_types": list(self.defect_types),
            "feature_names": list(self.feature_names),
            "signals": list(SIGNALS),
            "alloys": list(self.alloys),
            "limits": {k: list(v) for k, v in self.limits.items()},
            "calibration": {t: {"a": a, "b": b} for t, (a, b) in self.calibration.items()},
            "info": self.info,
            "boosters": {t: json.loads(bytes(self.boosters[t].save_raw("json"))) for t in self.defect_types},
        }
        return json.dumps(document, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes) -> "RiskModel":
        """Load a model written by to_json_bytes."""
        import xgboost as xgb

        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"risk model: not JSON ({exc})") from exc
        if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
            raise ValueError(f"risk model: 'format' must be {MODEL_FORMAT!r}")
        if document.get("version") != MODEL_FORMAT_VERSION:
            raise ValueError(f"risk model: version {document.get('version')!r} is not {MODEL_FORMAT_VERSION}")
        boosters = {}
        for t in document["defect_types"]:
            booster = xgb.Booster()
            booster.load_model(bytearray(json.dumps(document["boosters"][t]).encode("utf-8")))
            boosters[t] = booster
        return cls(
            defect_types=tuple(document["defect_types"]),
            feature_names=tuple(document["feature_names"]),
            alloys=tuple(document["alloys"]),
            limits={k: (float(v[0]), float(v[1])) for k, v in document["limits"].items()},
            boosters=boosters,
            calibration={t: (float(c["a"]), float(c["b"])) for t, c in document["calibration"].items()},
            info=document.get("info", {}),
        )


def train_risk_model(dataset: "pl.DataFrame", split: DaySplit, params: Mapping[str, Any] | None = None) -> RiskModel:
    """Fit one booster per defect type on the train days, early-stopped and calibrated on the val days."""
    import xgboost as xgb

    unknown = set(params or {}) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"train_risk_model: unknown param(s) {sorted(unknown)}; known: {', '.join(DEFAULT_PARAMS)}")
    p = {**DEFAULT_PARAMS, **(params or {})}
    train, val = split.rows(dataset, "train"), split.rows(dataset, "val")
    if train.height == 0 or val.height == 0:
        raise ValueError(f"train_risk_model: {train.height} train and {val.height} validation rows; both must be > 0")
    missing = [target_column(t) for t in DEFECT_TYPES if target_column(t) not in dataset.columns]
    if missing:
        raise KeyError(f"dataset: missing target column(s) {missing} (join_outcomes adds them)")
    names = model_feature_names()
    x_train, x_val = feature_matrix(train, names), feature_matrix(val, names)
    nthread = int(p["nthread"])
    boosters, calibration, facts = {}, {}, {}
    for t in DEFECT_TYPES:
        y_train = train[target_column(t)].to_numpy().astype(np.float64)
        y_val = val[target_column(t)].to_numpy().astype(np.float64)
        pos, neg = float(y_train.sum()), float(len(y_train) - y_train.sum())
        scale_pos_weight = neg / pos if pos > 0 else 1.0
        booster_params = {k: p[k] for k in _BOOSTER_KEYS}
        booster_params.update(objective="binary:logistic", tree_method="hist", scale_pos_weight=scale_pos_weight)
        d_train = xgb.DMatrix(x_train, label=y_train, feature_names=list(names), missing=np.nan, nthread=nthread)
        d_val = xgb.DMatrix(x_val, label=y_val, feature_names=list(names), missing=np.nan, nthread=nthread)
        # Early stopping watches the loss the trees optimise: validation positives weighted like train's.
        d_stop = xgb.DMatrix(
            x_val, label=y_val, weight=np.where(y_val > 0, scale_pos_weight, 1.0),
            feature_names=list(names), missing=np.nan, nthread=nthread,
        )
        notes = []
        if pos == 0:
            notes.append("no positive train parts: the model predicts the base rate")
        if 0 < y_val.sum() < len(y_val):
            booster = xgb.train(
                booster_params, d_train, int(p["num_boost_round"]), evals=[(d_stop, "val")],
                early_stopping_rounds=int(p["early_stopping_rounds"]), verbose_eval=False,
            )
            best = int(booster.best_iteration)
            booster = booster[: best + 1]
        else:
            notes.append("validation days have a single class: no early stopping, fixed 50 rounds")
            booster = xgb.train(booster_params, d_train, 50, verbose_eval=False)
            best = 49
        margin_val = booster.predict(d_val, output_margin=True).astype(np.float64)
        calibration[t] = fit_platt(margin_val, y_val, fallback_offset=-math.log(scale_pos_weight))
        boosters[t] = booster
        facts[t] = {
            "train_positives": int(pos),
            "train_parts": int(len(y_train)),
            "val_positives": int(y_val.sum()),
            "val_parts": int(len(y_val)),
            "scale_pos_weight": scale_pos_weight,
            "best_iteration": best,
            "notes": notes,
        }
    info = {"params": p, "split": split.to_dict(), "per_type": facts}
    return RiskModel(DEFECT_TYPES, names, ALLOYS, dict(LIMITS), boosters, calibration, info)


def predict_risk(model: RiskModel, features: "pl.DataFrame") -> "pl.DataFrame":
    """Risk per defect type (columns risk_<type>) for each part of a part_features frame."""
    import polars as pl

    risks = model.predict_proba(feature_matrix(features, model.feature_names))
    keys = [c for c in ("part_id", "day") if c in features.columns]
    return features.select(keys).with_columns(pl.Series(f"risk_{t}", risks[t]) for t in model.defect_types)


def risk_for_window(model: RiskModel, window: Any) -> dict[str, float]:
    """Risk per defect type for one part's recent samples (canonical units), with numpy and xgboost only.

    ``window`` is a mapping (e.g. a JSON body) or a polars DataFrame with every signal in SIGNALS, an
    optional ``timestamp`` and the part's ``alloy`` (a string, or a column of it).
    """
    if hasattr(window, "get_column"):  # polars DataFrame, without importing polars
        columns = {c: window.get_column(c).to_numpy() for c in window.columns}
    elif isinstance(window, Mapping):
        columns = dict(window)
    else:
        raise TypeError("risk_for_window: window must be a mapping of columns or a polars DataFrame")
    alloy = columns.pop("alloy", None)
    if alloy is not None and not isinstance(alloy, str):
        alloy = next((str(a) for a in alloy if a is not None), None)
    numeric = {k: v for k, v in columns.items() if k in SIGNALS or k == "timestamp"}
    features = window_features_numpy(numeric, limits=model.limits)
    row = vector_from_window_features(features, alloy, model.feature_names)
    return {t: float(v[0]) for t, v in model.predict_proba(row[None, :]).items()}


# -------------------------------------------------------------------------------------- evaluation


def _targets(frame: "pl.DataFrame", defect_type: str) -> np.ndarray:
    column = target_column(defect_type)
    if column not in frame.columns:
        raise KeyError(f"evaluation frame: missing target column {column!r}")
    return frame[column].to_numpy().astype(np.float64)


def _macro(per_type: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    values = [v[key] for v in per_type.values() if v.get(key) is not None]
    return float(np.mean(values)) if values else None


def evaluate_risk(model: RiskModel, test: "pl.DataFrame", n_bins: int = 10) -> dict[str, Any]:
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
                    best = {"feature": name, "direction": direction, "threshold": float(thresholds[k]), "f1": float(f1[k])}
    return best


def _apply_rule(rule: Mapping[str, Any], matrix: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    if rule["feature"] is None:
        return np.zeros(len(matrix))
    x = matrix[:, list(feature_names).index(rule["feature"])]
    with np.errstate(invalid="ignore"):
        fires = x > rule["threshold"] if rule["direction"] == ">" else x < rule["threshold"]
    return fires.astype(np.float64)


def evaluate_baselines(dataset: "pl.DataFrame", split: DaySplit) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------------- plots


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], per_type: Mapping[str, Mapping[str, Any]]) -> bytes:
    """ROC curve per defect type, PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for t, (fpr, tpr) in curves.items():
        auc = per_type[t]["roc_auc"]
        ax.plot(fpr, tpr, label=f"{t} (AUC {auc:.2f})" if auc is not None else f"{t} (AUC n/a)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Defect risk: ROC on hold-out days")
    ax.legend(loc="lower right", fontsize=8)
    return _png(figure)


def plot_reliability(per_type: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Reliability diagram (observed rate against mean predicted risk per bin) per defect type, PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for t, metrics in per_type.items():
        rows = [r for r in metrics["reliability"] if r["n"]]
        label = f"{t} (Brier {metrics['brier']:.3f})"
        ax.plot([r["mean_risk"] for r in rows], [r["observed_rate"] for r in rows], marker="o", label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted risk", ylabel="observed defect rate", title="Calibration")
    ax.legend(loc="upper left", fontsize=8)
    return _png(figure)


def plot_contributions(per_type: Mapping[str, Mapping[str, Any]], top: int = 8) -> bytes:
    """Mean |contribution| of the top features per defect type (XGBoost pred_contribs), PNG."""
    from matplotlib.figure import Figure

    n = len(per_type)
    figure = Figure(figsize=(4 * n, 4), layout="constrained")
    for i, (t, metrics) in enumerate(per_type.items()):
        ax = figure.add_subplot(1, n, i + 1)
        items = list(metrics["mean_abs_contribution"].items())[:top][::-1]
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.set_title(t)
        ax.set_xlabel("mean |contribution| (log-odds)")
        ax.tick_params(axis="y", labelsize=7)
    return _png(figure)
