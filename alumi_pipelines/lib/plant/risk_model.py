"""Defect-risk model: one XGBoost binary classifier per defect type, trained, calibrated and scored.

Training uses the time split (train days fit the trees, validation days stop boosting early and fit a
Platt calibration of the margin); class imbalance is handled per type with ``scale_pos_weight``.
The model serialises to one JSON document that holds each booster in XGBoost's own JSON format plus
the feature names, operating limits and calibration, so an edge device can score a sensor window
with xgboost and numpy only (``risk_for_window``). The document format (name, version, parsing) is
alumi_edge.risk's, the reader on the device, so both sides read the same document the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from alumi_edge.risk import MODEL_FORMAT, MODEL_FORMAT_VERSION, load_booster, parse_risk_document
from alumi_pipelines.lib.plant.dataset import ALLOYS, DEFECT_TYPES, DaySplit, target_column
from alumi_pipelines.lib.plant.features import FEATURE_COLUMNS, window_features_numpy
from alumi_pipelines.lib.plant.metrics import fit_platt, sigmoid
from alumi_pipelines.lib.plant.samples import LIMITS, SIGNALS

if TYPE_CHECKING:
    import polars as pl

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
    "max_depth",
    "eta",
    "subsample",
    "colsample_bytree",
    "min_child_weight",
    "lambda",
    "eval_metric",
    "nthread",
    "seed",
)


def model_feature_names(alloys: Sequence[str] = ALLOYS) -> tuple[str, ...]:
    """Model inputs in order: the numeric part features, then one-hot alloy columns."""
    return FEATURE_COLUMNS + tuple(f"alloy_{a}" for a in alloys)


def feature_matrix(features: pl.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
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

        dmatrix = xgb.DMatrix(
            np.asarray(matrix, dtype=np.float64), feature_names=list(self.feature_names), missing=np.nan
        )
        out = {}
        for t in self.defect_types:
            a, b = self.calibration[t]
            out[t] = sigmoid(a * self.boosters[t].predict(dmatrix, output_margin=True).astype(np.float64) + b)
        return out

    def contributions(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """XGBoost's own per-feature contributions (margin units, last column = bias) per defect type."""
        import xgboost as xgb

        dmatrix = xgb.DMatrix(
            np.asarray(matrix, dtype=np.float64), feature_names=list(self.feature_names), missing=np.nan
        )
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
    def from_json_bytes(cls, data: bytes) -> RiskModel:
        """Load a model written by to_json_bytes (a ValueError, alumi_edge's RiskModelError, says what is wrong)."""
        import xgboost as xgb

        document = parse_risk_document(data)
        return cls(
            defect_types=document.defect_types,
            feature_names=document.feature_names,
            alloys=document.alloys,
            limits=document.limits,
            boosters={t: load_booster(xgb, document.booster_documents[t]) for t in document.defect_types},
            calibration=document.calibration,
            info=document.info,
        )


def train_risk_model(dataset: pl.DataFrame, split: DaySplit, params: Mapping[str, Any] | None = None) -> RiskModel:
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
            x_val,
            label=y_val,
            weight=np.where(y_val > 0, scale_pos_weight, 1.0),
            feature_names=list(names),
            missing=np.nan,
            nthread=nthread,
        )
        notes = []
        if pos == 0:
            notes.append("no positive train parts: the model predicts the base rate")
        if 0 < y_val.sum() < len(y_val):
            booster = xgb.train(
                booster_params,
                d_train,
                int(p["num_boost_round"]),
                evals=[(d_stop, "val")],
                early_stopping_rounds=int(p["early_stopping_rounds"]),
                verbose_eval=False,
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


def predict_risk(model: RiskModel, features: pl.DataFrame) -> pl.DataFrame:
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
