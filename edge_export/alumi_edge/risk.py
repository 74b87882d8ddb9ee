"""Plant-risk scoring on the device: a part's recent sensor window → calibrated risk per defect type.

The release's ``risk_model`` file is the pipeline's JSON document (format ``alumi-defect-risk``): the
feature names, signals, operating limits, alloys and Platt calibration, plus one booster per defect type
in XGBoost's own JSON format. This module owns that format: its name and version,
:func:`parse_risk_document` and :func:`load_booster` are what the pipeline (alumi_pipelines.lib.plant.risk_model)
reads it with too. Window features are computed here with numpy only and follow the
pipeline's definition (alumi_pipelines.lib.plant.features.window_features_numpy; the tests check both agree):
per signal over the non-missing values mean, min, max, std (ddof 1, from 2 values), least-squares
slope per second (from 2 values), share outside the operating limits, and the share of missing
values; plus the window's duration. The boosters need the optional ``xgboost`` package
(``pip install 'alumi-edge[risk]'``); without it :class:`RiskUnavailable` is raised.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FORMAT = "alumi-defect-risk"
MODEL_FORMAT_VERSION = 1
STATS = ("mean", "std", "min", "max", "slope", "frac_outside", "dropout")


class RiskUnavailable(RuntimeError):
    """Risk scoring cannot run on this device (xgboost is not installed)."""


class RiskModelError(ValueError):
    """The risk model file is not a usable ``alumi-defect-risk`` document; the message says why."""


class WindowError(ValueError):
    """A sensor window that cannot be scored; the message names the field and the rule."""


def import_xgboost():
    """The xgboost module, or RiskUnavailable with the install hint."""
    try:
        import xgboost
    except ImportError as exc:
        raise RiskUnavailable(
            "risk scoring needs the xgboost package, which is not installed on this device: "
            "pip install 'alumi-edge[risk]'"
        ) from exc
    return xgboost


def window_seconds(timestamps: Sequence[Any] | None, n: int) -> np.ndarray:
    """Sample times in seconds: epoch numbers or ISO 8601 strings with a UTC offset; 1 s apart when absent."""
    if timestamps is None:
        return np.arange(n, dtype=np.float64)
    if len(timestamps) != n:
        raise WindowError(f"timestamps: {len(timestamps)} values, expected {n} (one per sample)")
    out = np.empty(n, dtype=np.float64)
    for i, value in enumerate(timestamps):
        if isinstance(value, bool) or value is None:
            raise WindowError(f"timestamps[{i}]: {value!r} is not a time")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise WindowError(f"timestamps[{i}]: {value!r} is not a finite number of seconds")
            out[i] = float(value)
            continue
        try:
            parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise WindowError(f"timestamps[{i}]: {value!r} is not an ISO 8601 time") from exc
        if parsed.tzinfo is None:
            raise WindowError(f"timestamps[{i}]: {value!r} has no UTC offset")
        out[i] = parsed.timestamp()
    return out


def window_features(
    signals: Mapping[str, Sequence[float | None]],
    signal_names: Sequence[str],
    limits: Mapping[str, Sequence[float]],
    timestamps: Sequence[Any] | None = None,
) -> dict[str, float]:
    """The statistics of one window (canonical units; None or NaN = missing); missing statistics are NaN."""
    missing = [s for s in signal_names if s not in signals]
    if missing:
        raise WindowError(
            f"signals: missing {', '.join(map(repr, missing))} (the model needs {', '.join(signal_names)})"
        )
    unknown = sorted(set(signals) - set(signal_names))
    if unknown:
        raise WindowError(
            f"signals: unknown {', '.join(map(repr, unknown))} (the model knows {', '.join(signal_names)})"
        )
    lengths = {s: len(signals[s]) for s in signal_names}
    n = lengths[signal_names[0]]
    ragged = [f"{s} has {k}" for s, k in lengths.items() if k != n]
    if ragged:
        raise WindowError(
            f"signals: every signal needs the same number of values ({signal_names[0]} has {n}; "
            + ", ".join(ragged)
            + ")"
        )
    if n == 0:
        raise WindowError("signals: the window holds no samples")
    t = window_seconds(timestamps, n)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order].min()
    out: dict[str, float] = {}
    for name in signal_names:
        try:
            value = np.array([np.nan if v is None else v for v in signals[name]], dtype=np.float64)[order]
        except (TypeError, ValueError) as exc:
            raise WindowError(f"signals.{name}: values must be numbers or null") from exc
        if np.isinf(value).any():
            raise WindowError(f"signals.{name}: values must be finite (null for a missing value)")
        valid = ~np.isnan(value)
        v, tv = value[valid], t[valid]
        k = int(valid.sum())
        lo, hi = float(limits[name][0]), float(limits[name][1])
        out[f"{name}__mean"] = float(v.mean()) if k else math.nan
        out[f"{name}__std"] = float(v.std(ddof=1)) if k >= 2 else math.nan
        out[f"{name}__min"] = float(v.min()) if k else math.nan
        out[f"{name}__max"] = float(v.max()) if k else math.nan
        if k >= 2:
            dt, dv = tv - tv.mean(), v - v.mean()
            out[f"{name}__slope"] = float((dt * dv).sum() / (dt * dt).sum())
        else:
            out[f"{name}__slope"] = math.nan
        out[f"{name}__frac_outside"] = float(((v < lo) | (v > hi)).sum() / k) if k else math.nan
        out[f"{name}__dropout"] = float((n - k) / n)
    out["duration_s"] = float(t.max() - t.min())
    return out


@dataclass(frozen=True)
class RiskDocument:
    """A checked ``alumi-defect-risk`` document: metadata, calibration and the boosters' XGBoost JSON."""

    defect_types: tuple[str, ...]
    feature_names: tuple[str, ...]
    signals: tuple[str, ...]
    alloys: tuple[str, ...]
    limits: dict[str, tuple[float, float]]
    calibration: dict[str, tuple[float, float]]  # defect type -> Platt (a, b) on the margin
    booster_documents: dict[str, Any]  # defect type -> booster in XGBoost's own JSON model format
    info: dict[str, Any]  # training facts; ``info.registry`` names the registered version once published
    version: str  # the registered version, else ``sha256:<first 12 hex digits>``
    sha256: str


def parse_risk_document(data: bytes, source: str = "risk model") -> RiskDocument:
    """Parse and check a risk model document (no xgboost needed); RiskModelError says what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RiskModelError(f"{source}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise RiskModelError(f"{source}: field 'format' must be {MODEL_FORMAT!r}")
    if doc.get("version") != MODEL_FORMAT_VERSION:
        raise RiskModelError(
            f"{source}: field 'version' is {doc.get('version')!r}, only version {MODEL_FORMAT_VERSION} can be read"
        )
    try:
        types = tuple(doc["defect_types"])
        signals = tuple(doc["signals"])
        names = tuple(doc["feature_names"])
        limits = {s: (float(doc["limits"][s][0]), float(doc["limits"][s][1])) for s in signals}
        calibration = {t: (float(doc["calibration"][t]["a"]), float(doc["calibration"][t]["b"])) for t in types}
        boosters = {t: doc["boosters"][t] for t in types}
        info = dict(doc.get("info") or {})
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise RiskModelError(f"{source}: incomplete model document ({type(exc).__name__}: {exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    registry = info.get("registry") or {}
    version = str(registry["version"]) if registry.get("version") is not None else f"sha256:{digest[:12]}"
    return RiskDocument(
        types, names, signals, tuple(doc.get("alloys", ())), limits, calibration, boosters, info, version, digest
    )


def load_booster(xgb, document: Any):
    """An ``xgboost.Booster`` from its XGBoost JSON model document (``xgb`` is the imported module)."""
    booster = xgb.Booster()
    booster.load_model(bytearray(json.dumps(document).encode("utf-8")))
    return booster


@dataclass
class EdgeRiskModel:
    """A parsed risk model: metadata, calibration and (loaded on demand) the XGBoost boosters."""

    defect_types: tuple[str, ...]
    feature_names: tuple[str, ...]
    signals: tuple[str, ...]
    alloys: tuple[str, ...]
    limits: dict[str, tuple[float, float]]
    calibration: dict[str, tuple[float, float]]
    booster_documents: dict[str, Any]
    version: str
    sha256: str
    info: dict[str, Any] = field(default_factory=dict)
    _boosters: dict[str, Any] | None = None

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "risk model") -> EdgeRiskModel:
        """Parse and check the document (xgboost is not needed for this)."""
        doc = parse_risk_document(data, source)
        return cls(
            doc.defect_types,
            doc.feature_names,
            doc.signals,
            doc.alloys,
            doc.limits,
            doc.calibration,
            doc.booster_documents,
            doc.version,
            doc.sha256,
            info=doc.info,
        )

    def boosters(self) -> dict[str, Any]:
        """One xgboost Booster per defect type (RiskUnavailable without xgboost)."""
        if self._boosters is None:
            xgb = import_xgboost()
            self._boosters = {t: load_booster(xgb, document) for t, document in self.booster_documents.items()}
        return self._boosters

    def vector(self, features: Mapping[str, float], alloy: str) -> np.ndarray:
        """The model's input row: numeric features in order, then the alloy one-hot columns."""
        row = []
        for name in self.feature_names:
            if name.startswith("alloy_"):
                row.append(1.0 if alloy == name[len("alloy_") :] else 0.0)
            else:
                row.append(float(features[name]))
        return np.array(row, dtype=np.float64)

    def score(
        self, alloy: str, signals: Mapping[str, Sequence[float | None]], timestamps: Sequence[Any] | None = None
    ) -> dict[str, float]:
        """Calibrated risk per defect type for one window of samples of a part of ``alloy``."""
        if self.alloys and alloy not in self.alloys:
            raise WindowError(f"alloy: {alloy!r} is not one the model was trained on ({', '.join(self.alloys)})")
        features = window_features(signals, self.signals, self.limits, timestamps)
        xgb = import_xgboost()
        boosters = self.boosters()
        matrix = xgb.DMatrix(
            self.vector(features, alloy)[None, :], feature_names=list(self.feature_names), missing=np.nan
        )
        out = {}
        for t in self.defect_types:
            a, b = self.calibration[t]
            margin = float(boosters[t].predict(matrix, output_margin=True)[0])
            out[t] = float(1.0 / (1.0 + np.exp(-(a * margin + b))))
        return out


class RiskModelCache:
    """The model of one file, reloaded when the file changes (path, size or modification time)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._model: EdgeRiskModel | None = None

    def get(self, path: Path) -> EdgeRiskModel:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key != self._key:
                model = EdgeRiskModel.from_bytes(path.read_bytes(), str(path))
                model.boosters()  # fail here (501) rather than half-loaded
                self._model, self._key = model, key
            return self._model
