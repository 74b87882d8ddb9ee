"""Data drift of per-image features and of edge predictions, with evidently on bounded samples.

Evidently sees at most ``max_rows`` rows of each side, chosen by :func:`sample_rows`, so a check costs
the same however large the lake grows. Tests are evidently's defaults: up to 1,000 reference rows a
p-value test (K-S for numbers, chi-square / Z for categories), above that a distance (Wasserstein normed
by the reference's standard deviation, Jensen-Shannon), because a p-value on many rows flags differences
too small to matter. Keep ``max_rows`` above 1,000 so that a sample and the full data get the same kind
of test. The data set has drifted when the share of drifted columns reaches ``threshold_share``
(evidently's rule); the check passes below it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import polars as pl

# Same names as imaging.FEATURE_COLUMNS (not imported: that module pulls in cv2).
IMAGE_FEATURE_COLUMNS = ("brightness", "contrast", "sharpness", "mean_b", "mean_g", "mean_r", "saturation")
SIZE_COLUMNS = ("orig_width", "orig_height")
DRIFT_COLUMNS = IMAGE_FEATURE_COLUMNS + SIZE_COLUMNS
PREDICTION_NUMERICAL = ("confidence",)
PREDICTION_CATEGORICAL = ("class_name",)

DEFAULT_MAX_ROWS = 5000


class ColumnDrift(NamedTuple):
    stattest: str  # evidently's name of the test
    score: float  # p-value or distance, as the test reports it
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    drift_share: float  # share of columns that drifted
    drifted_columns: list[str]
    per_column: dict[str, ColumnDrift]
    passed: bool  # drift_share < threshold_share
    threshold_share: float
    html: bytes  # evidently's self-contained HTML report
    json: bytes  # our summary plus evidently's metrics, keys sorted
    reference_rows: int  # rows given
    current_rows: int
    reference_sampled: int  # rows evidently saw
    current_sampled: int

    def summary(self) -> dict:
        """The result without the reports, as plain JSON-able values."""
        return {
            "drift_share": self.drift_share,
            "drifted_columns": self.drifted_columns,
            "per_column": {c: d._asdict() for c, d in self.per_column.items()},
            "passed": self.passed,
            "threshold_share": self.threshold_share,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "reference_sampled": self.reference_sampled,
            "current_sampled": self.current_sampled,
        }


def _to_polars(df) -> pl.DataFrame:
    if isinstance(df, pl.DataFrame):
        return df
    return pl.from_pandas(df)


def sample_rows(df: pl.DataFrame, max_rows: int, seed: int = 0, *, key: Sequence[str] | None = None) -> pl.DataFrame:
    """At most ``max_rows`` rows, the same ones for the same data, in their original order.

    A row is kept when its seeded hash of ``key`` (default: image_id when present, else every column) is
    among the ``max_rows`` smallest, so as data grows a row once left out stays out and a kept row is only
    displaced by a new row with a smaller hash.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    df = _to_polars(df)
    if df.height <= max_rows:
        return df
    columns = list(key) if key is not None else (["image_id"] if "image_id" in df.columns else df.columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"sample key column(s) {', '.join(missing)} not in the table ({', '.join(df.columns)})")
    text = df.select(
        pl.concat_str([pl.col(c).cast(pl.Utf8).fill_null("\x00") for c in columns], separator="\x1f")
    ).to_series()
    salt = int(seed).to_bytes(8, "little", signed=True)
    hashes = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8, key=salt).digest(), "big") for t in text]
    ranked = pl.DataFrame({"h": pl.Series(hashes, dtype=pl.UInt64), "i": pl.int_range(df.height, eager=True)})
    keep = ranked.sort(["h", "i"]).head(max_rows)["i"].sort()
    return df[keep]


def _prepare(df, name: str, numerical: Sequence[str], categorical: Sequence[str]) -> pl.DataFrame:
    df = _to_polars(df)
    wanted = list(numerical) + list(categorical)
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)} (has {', '.join(df.columns)})")
    if df.height == 0:
        raise ValueError(f"{name}: no rows, nothing to compare")
    out = df.select([pl.col(c).cast(pl.Float64) for c in numerical] + [pl.col(c).cast(pl.Utf8) for c in categorical])
    empty = [c for c in wanted if out[c].null_count() == out.height]
    if empty:
        raise ValueError(f"{name}: column(s) {', '.join(empty)} have no values")
    return out


def _is_p_value(method: str) -> bool:
    return "p_value" in method.replace("-", "_").lower()


def _run_drift(
    reference,
    current,
    numerical: Sequence[str],
    categorical: Sequence[str],
    *,
    key: Sequence[str] | None,
    max_rows: int | None,
    seed: int,
    threshold_share: float,
    num_method: str | None,
    cat_method: str | None,
    num_threshold: float | None,
    cat_threshold: float | None,
) -> DriftResult:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if not 0 < threshold_share <= 1:
        raise ValueError(f"threshold_share must be in (0, 1], got {threshold_share}")
    reference, current = _to_polars(reference), _to_polars(current)
    ref_rows, cur_rows = reference.height, current.height
    if max_rows is not None:
        reference = sample_rows(reference, max_rows, seed, key=key)
        current = sample_rows(current, max_rows, seed, key=key)
    ref = _prepare(reference, "reference", numerical, categorical)
    cur = _prepare(current, "current", numerical, categorical)

    columns = list(numerical) + list(categorical)
    definition = DataDefinition(numerical_columns=list(numerical), categorical_columns=list(categorical))
    preset = DataDriftPreset(
        columns=columns,
        drift_share=threshold_share,
        num_method=num_method,
        cat_method=cat_method,
        num_threshold=num_threshold,
        cat_threshold=cat_threshold,
    )
    with warnings.catch_warnings():
        # evidently's correlation widgets divide by a zero deviation on constant columns (e.g. one image size)
        warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)
        snapshot = Report([preset]).run(
            current_data=Dataset.from_pandas(cur.to_pandas(), data_definition=definition),
            reference_data=Dataset.from_pandas(ref.to_pandas(), data_definition=definition),
        )
        html = snapshot.get_html_str(as_iframe=False).encode()
    report = snapshot.dict()
    per_column: dict[str, ColumnDrift] = {}
    share = None
    for metric in report["metrics"]:
        config = metric["config"]
        kind = config.get("type", "")
        if kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif kind.endswith(":ValueDrift"):
            method, threshold, score = str(config["method"]), float(config["threshold"]), float(metric["value"])
            drifted = score < threshold if _is_p_value(method) else score >= threshold
            per_column[config["column"]] = ColumnDrift(method, score, drifted)
    if share is None or set(per_column) != set(columns):  # pragma: no cover - evidently changed its output
        raise RuntimeError(f"evidently report lacks drift metrics for {sorted(set(columns) - set(per_column))}")
    per_column = {c: per_column[c] for c in columns}
    drifted = [c for c in columns if per_column[c].drifted]
    fields = dict(
        drift_share=share,
        drifted_columns=drifted,
        per_column=per_column,
        passed=share < threshold_share,
        threshold_share=threshold_share,
        reference_rows=ref_rows,
        current_rows=cur_rows,
        reference_sampled=ref.height,
        current_sampled=cur.height,
    )
    summary = DriftResult(html=b"", json=b"", **fields).summary()
    body = json.dumps({**summary, "evidently": report}, sort_keys=True).encode()
    return DriftResult(html=html, json=body, **fields)


def feature_drift(
    reference,
    current,
    columns: Sequence[str] = DRIFT_COLUMNS,
    *,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    seed: int = 0,
    threshold_share: float = 0.5,
    num_method: str | None = None,
    num_threshold: float | None = None,
) -> DriftResult:
    """Drift of per-image features (processed features tables) of ``current`` against ``reference``.

    ``max_rows=None`` gives evidently every row (for benchmarks and checks of the sampling);
    ``num_method``/``num_threshold`` override evidently's choice of test (e.g. "ks", "wasserstein").
    """
    return _run_drift(
        reference,
        current,
        list(columns),
        [],
        key=None,
        max_rows=max_rows,
        seed=seed,
        threshold_share=threshold_share,
        num_method=num_method,
        cat_method=None,
        num_threshold=num_threshold,
        cat_threshold=None,
    )


def prediction_drift(
    reference_preds,
    current_preds,
    *,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    seed: int = 0,
    threshold_share: float = 0.5,
) -> DriftResult:
    """Drift of edge predictions (one row per detection: class_name, confidence) — confidences and class mix."""
    return _run_drift(
        reference_preds,
        current_preds,
        list(PREDICTION_NUMERICAL),
        list(PREDICTION_CATEGORICAL),
        key=None,
        max_rows=max_rows,
        seed=seed,
        threshold_share=threshold_share,
        num_method=None,
        cat_method=None,
        num_threshold=None,
        cat_threshold=None,
    )


# -- edge prediction logs ------------------------------------------------------------------------------
# An edge device logs what its detector answered: one row per box (time, request_id, model_version,
# image_sha256, class_name, confidence, ...); a request without a box is one row with null class_name and
# confidence. The day table below is what prediction drift compares.
PREDICTION_LOG_COLUMNS = ("time", "request_id", "model_version", "image_sha256", "class_name", "confidence")
PREDICTION_TABLE_SCHEMA = {
    "device": pl.Utf8,
    "source_file": pl.Utf8,
    "time": pl.Datetime("us", "UTC"),
    "request_id": pl.Utf8,
    "model_version": pl.Utf8,
    "image_sha256": pl.Utf8,
    "width": pl.Int64,
    "height": pl.Int64,
    "class_name": pl.Utf8,
    "confidence": pl.Float64,
}
PREDICTION_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class PredictionLogError(ValueError):
    """A prediction log that cannot be read as one (a required column missing, a time column of another type)."""


def empty_prediction_table() -> pl.DataFrame:
    return pl.DataFrame(schema=PREDICTION_TABLE_SCHEMA)


def _utc_times(column: pl.Series) -> pl.Series:
    """Times as UTC datetimes: timestamps (naive ones taken as UTC) or ISO-8601 strings; unreadable → null."""
    import datetime as dt

    if isinstance(column.dtype, pl.Datetime):
        times = column.dt.cast_time_unit("us")
        if column.dtype.time_zone is None:
            return times.dt.replace_time_zone("UTC")
        return times.dt.convert_time_zone("UTC")
    if column.dtype != pl.Utf8:
        raise PredictionLogError(f"column 'time' must hold timestamps or ISO-8601 strings, not {column.dtype}")

    def parse(text: str | None) -> dt.datetime | None:
        try:
            moment = dt.datetime.fromisoformat(text.strip())  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            return None
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)

    parsed = {text: parse(text) for text in column.unique().to_list()}
    return pl.Series(column.name, [parsed[t] for t in column.to_list()], dtype=pl.Datetime("us", "UTC"))


def prediction_log_rows(log, *, device: str, source_file: str) -> tuple[pl.DataFrame, int]:
    """One prediction log in the day table's schema (``PREDICTION_TABLE_SCHEMA``), and how many rows it dropped.

    Columns other than ``PREDICTION_LOG_COLUMNS`` and ``width``/``height`` are dropped. Dropped rows: a time
    that is not a timestamp, no request_id, and a box (class_name set) whose confidence is missing or outside
    0..1. A row without class_name is a request without a box; its confidence is cleared.
    """
    log = _to_polars(log)
    missing = [c for c in PREDICTION_LOG_COLUMNS if c not in log.columns]
    if missing:
        raise PredictionLogError(f"missing column(s) {', '.join(missing)} (has {', '.join(log.columns)})")
    n = log.height
    table = log.select(
        pl.lit(device, pl.Utf8).alias("device"),
        pl.lit(source_file, pl.Utf8).alias("source_file"),
        _utc_times(log["time"]).alias("time"),
        *(pl.col(c).cast(pl.Utf8) for c in ("request_id", "model_version", "image_sha256")),
        *(
            (pl.col(c).cast(pl.Int64, strict=False) if c in log.columns else pl.lit(None, pl.Int64)).alias(c)
            for c in ("width", "height")
        ),
        pl.col("class_name").cast(pl.Utf8).str.strip_chars(),
        pl.col("confidence").cast(pl.Float64, strict=False),
    ).with_columns(
        pl.when(pl.col("class_name") == "").then(None).otherwise(pl.col("class_name")).alias("class_name"),
    )
    box = pl.col("class_name").is_not_null()
    table = table.with_columns(pl.when(box).then(pl.col("confidence")).otherwise(None).alias("confidence")).filter(
        pl.col("time").is_not_null(),
        pl.col("request_id").is_not_null() & (pl.col("request_id") != ""),
        ~box | pl.col("confidence").is_between(0.0, 1.0),
    )
    return table.select(list(PREDICTION_TABLE_SCHEMA)).cast(PREDICTION_TABLE_SCHEMA), n - table.height


def prediction_boxes(table: pl.DataFrame, model_version: str | None = None) -> pl.DataFrame:
    """The boxes of a day table (rows with a class), of one model version when given: prediction_drift's input."""
    boxes = table.filter(pl.col("class_name").is_not_null())
    if model_version is not None:
        boxes = boxes.filter(pl.col("model_version") == str(model_version))
    return boxes.select("device", "request_id", "class_name", "confidence")


def prediction_summary(table: pl.DataFrame, day: str | None = None) -> dict:
    """Counts of a day table: requests, boxes, devices, model versions, classes, confidence quantiles."""
    requests = table.select("device", "request_id").unique()
    boxes = table.filter(pl.col("class_name").is_not_null())
    with_box = boxes.select("device", "request_id").unique().height
    per_version = table.select("model_version", "device", "request_id").unique().group_by("model_version").len()
    quantiles = {
        f"p{round(100 * q):02d}": (float(boxes["confidence"].quantile(q, "linear")) if boxes.height else None)
        for q in PREDICTION_QUANTILES
    }
    outside = 0
    if day is not None and table.height:
        outside = int((table["time"].dt.date().cast(pl.Utf8) != day).sum())
    return {
        "requests": requests.height,
        "requests_without_boxes": requests.height - with_box,
        "boxes": boxes.height,
        "devices": sorted(table["device"].unique().to_list()),
        "model_versions": {str(v): int(n) for v, n in sorted(per_version.iter_rows(), key=lambda r: str(r[0]))},
        "class_counts": {str(c): int(n) for c, n in sorted(boxes.group_by("class_name").len().iter_rows())},
        "confidence": quantiles,
        "rows_outside_day": outside,
    }
