"""Per-part features from normalised plant sensor samples: windowed statistics per part or edge window.

The module imports only numpy at load time (and the constants of ``samples``, which imports nothing
else). ``window_features_numpy`` (and the constants it uses) is the feature definition the edge server
needs; it has no polars dependency and must stay equal to ``part_features`` (tests check both, and the
pandas baseline ``part_features_pandas``, agree numerically).

Feature definitions, per part (or edge window) and per signal, over the rows present:
valid values are the non-missing ones; ``mean``/``min``/``max`` over valid values; ``std`` with
ddof=1 (missing below 2 valid values); ``slope`` is the least-squares slope of value against time in
seconds (missing below 2 valid values); ``frac_outside`` is the share of valid values outside the
operating limits (strictly below ``lo`` or above ``hi``); ``dropout`` is the share of rows whose value
is missing. ``duration_s`` is last minus first timestamp, in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from alumi_pipelines.lib.plant.samples import LIMITS, SIGNALS

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

STATS: tuple[str, ...] = ("mean", "std", "min", "max", "slope", "frac_outside", "dropout")

# Numeric feature columns of part_features / keys of window_features_numpy, in model order.
FEATURE_COLUMNS: tuple[str, ...] = tuple(f"{s}__{stat}" for s in SIGNALS for stat in STATS) + ("duration_s",)

PART_COLUMNS: tuple[str, ...] = ("part_id", "line", "alloy", "shift", "day", "start", "n_samples")


def part_features(clean: pl.DataFrame, limits: Mapping[str, tuple[float, float]] = LIMITS) -> pl.DataFrame:
    """Windowed statistics per part (one row per part_id) from normalised samples."""
    import polars as pl

    seconds = (pl.col("timestamp") - pl.col("timestamp").min().over("part_id")).dt.total_microseconds() / 1e6
    lf = clean.lazy().with_columns(seconds.alias("_t"))
    aggs: list[pl.Expr] = [
        pl.col("line").drop_nulls().first().alias("line"),
        pl.col("alloy").drop_nulls().first().alias("alloy"),
        pl.col("shift").drop_nulls().first().alias("shift"),
        pl.col("timestamp").min().dt.date().alias("day"),
        pl.col("timestamp").min().alias("start"),
        pl.len().cast(pl.Int64).alias("n_samples"),
    ]
    for sig in SIGNALS:
        value = pl.col(sig)
        valid = value.count()
        t = pl.when(value.is_not_null()).then(pl.col("_t"))
        dt, dv = t - t.mean(), value - value.mean()
        lo, hi = limits[sig]
        aggs += [
            value.mean().alias(f"{sig}__mean"),
            pl.when(valid >= 2).then(value.std(ddof=1)).alias(f"{sig}__std"),
            value.min().alias(f"{sig}__min"),
            value.max().alias(f"{sig}__max"),
            pl.when(valid >= 2).then((dt * dv).sum() / (dt * dt).sum()).alias(f"{sig}__slope"),
            pl.when(valid >= 1).then(((value < lo) | (value > hi)).sum() / valid).alias(f"{sig}__frac_outside"),
            (value.null_count() / pl.len()).alias(f"{sig}__dropout"),
        ]
    aggs.append((pl.col("_t").max() - pl.col("_t").min()).alias("duration_s"))
    out = lf.group_by("part_id").agg(aggs).sort("part_id").collect()
    return out.with_columns(pl.col(c).cast(pl.Float64) for c in FEATURE_COLUMNS).select(PART_COLUMNS + FEATURE_COLUMNS)


def part_features_pandas(clean: pd.DataFrame, limits: Mapping[str, tuple[float, float]] = LIMITS) -> pd.DataFrame:
    """The same statistics as part_features, computed with pandas (the benchmark baseline)."""
    import pandas as pd

    df = clean.sort_values(["part_id", "timestamp"], kind="stable")
    keys = df["part_id"]
    grouped = df.groupby(keys, sort=True)
    t = (df["timestamp"] - grouped["timestamp"].transform("min")).dt.total_seconds()
    n_rows = grouped.size()
    out = pd.DataFrame(index=n_rows.index)
    out["line"] = grouped["line"].first()
    out["alloy"] = grouped["alloy"].first()
    out["shift"] = grouped["shift"].first()
    start = grouped["timestamp"].min()
    out["day"] = start.dt.date
    out["start"] = start
    out["n_samples"] = n_rows.astype("int64")
    for sig in SIGNALS:
        value = df[sig].astype("float64")
        valid = value.notna()
        by_part = value.groupby(keys, sort=True)
        stats = by_part.agg(["mean", "std", "min", "max", "count"])
        t_valid = t.where(valid)
        dt = t_valid - t_valid.groupby(keys).transform("mean")
        dv = value - by_part.transform("mean")
        num = (dt * dv).groupby(keys, sort=True).sum()
        den = (dt * dt).groupby(keys, sort=True).sum()
        lo, hi = limits[sig]
        outside = ((value < lo) | (value > hi)).groupby(keys, sort=True).sum()
        count = stats["count"]
        out[f"{sig}__mean"] = stats["mean"]
        out[f"{sig}__std"] = stats["std"].where(count >= 2)
        out[f"{sig}__min"] = stats["min"]
        out[f"{sig}__max"] = stats["max"]
        out[f"{sig}__slope"] = (num / den).where(count >= 2)
        out[f"{sig}__frac_outside"] = (outside / count).where(count >= 1)
        out[f"{sig}__dropout"] = (n_rows - count) / n_rows
    out["duration_s"] = t.groupby(keys, sort=True).max() - t.groupby(keys, sort=True).min()
    return out.reset_index(names="part_id")[list(PART_COLUMNS + FEATURE_COLUMNS)]


def _seconds(timestamps) -> np.ndarray:
    """Timestamps (datetime64, numbers in seconds, or ISO strings with offsets) as float seconds."""
    arr = np.asarray(timestamps)
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[us]").astype(np.int64) / 1e6
    values = [datetime.fromisoformat(str(v).replace("Z", "+00:00")) for v in arr]
    if any(v.tzinfo is None for v in values):
        raise ValueError("timestamp: ISO strings need a UTC offset")
    return np.array([v.timestamp() for v in values], dtype=np.float64)


def window_features_numpy(
    columns: Mapping[str, Sequence[float] | np.ndarray],
    limits: Mapping[str, tuple[float, float]] = LIMITS,
) -> dict[str, float]:
    """The part_features statistics of one window of samples (canonical units), with numpy only.

    ``columns`` maps every name in SIGNALS to equally long arrays (NaN or None = missing) and may hold
    ``timestamp`` (datetime64, epoch seconds or ISO strings with offset); without it the samples are
    taken as 1 s apart. Missing statistics are NaN.
    """
    n = None
    for sig in SIGNALS:
        if sig not in columns:
            raise KeyError(f"window: missing signal {sig!r}")
        length = len(columns[sig])
        if n is not None and length != n:
            raise ValueError(f"window: signal {sig!r} has {length} values, expected {n}")
        n = length
    if not n:
        raise ValueError("window: no samples")
    t = _seconds(columns["timestamp"]) if "timestamp" in columns else np.arange(n, dtype=np.float64)
    if len(t) != n:
        raise ValueError(f"window: timestamp has {len(t)} values, expected {n}")
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order].min()
    out: dict[str, float] = {}
    for sig in SIGNALS:
        raw = np.asarray(columns[sig])
        if raw.dtype.kind not in "fiu":  # lists with None (JSON null) for missing values
            raw = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
        value = raw.astype(np.float64)[order]
        valid = ~np.isnan(value)
        v, tv = value[valid], t[valid]
        k = int(valid.sum())
        lo, hi = limits[sig]
        nan = math.nan
        out[f"{sig}__mean"] = float(v.mean()) if k else nan
        out[f"{sig}__std"] = float(v.std(ddof=1)) if k >= 2 else nan
        out[f"{sig}__min"] = float(v.min()) if k else nan
        out[f"{sig}__max"] = float(v.max()) if k else nan
        if k >= 2:
            dt, dv = tv - tv.mean(), v - v.mean()
            out[f"{sig}__slope"] = float((dt * dv).sum() / (dt * dt).sum())
        else:
            out[f"{sig}__slope"] = nan
        out[f"{sig}__frac_outside"] = float(((v < lo) | (v > hi)).sum() / k) if k else nan
        out[f"{sig}__dropout"] = float((n - k) / n)
    out["duration_s"] = float(t.max() - t.min())
    return out
