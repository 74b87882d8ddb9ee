"""Process-sensor samples in, per-part features out: validation, unit/time normalisation, windowing, join.

The module imports only numpy at load time. ``window_features_numpy`` (and the constants it uses) is
the feature definition the edge server needs; it has no polars dependency and must stay equal to
``part_features`` (tests check both, and the pandas baseline, agree numerically).

Feature definitions, per part (or edge window) and per signal, over the rows present:
valid values are the non-missing ones; ``mean``/``min``/``max`` over valid values; ``std`` with
ddof=1 (missing below 2 valid values); ``slope`` is the least-squares slope of value against time in
seconds (missing below 2 valid values); ``frac_outside`` is the share of valid values outside the
operating limits (strictly below ``lo`` or above ``hi``); ``dropout`` is the share of rows whose value
is missing. ``duration_s`` is last minus first timestamp, in seconds.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

# Canonical signals (name = quantity + canonical unit), in feature order.
SIGNALS: tuple[str, ...] = (
    "melt_temp_c",
    "casting_speed_mm_s",
    "mould_level_mm",
    "cooling_water_flow_l_min",
    "cooling_water_temp_c",
    "rolling_force_kn",
    "strip_speed_m_min",
)

# Defect types of the process branch; the names match the vision branch's default classes.
DEFECT_TYPES: tuple[str, ...] = ("scratch", "dent", "pit", "crack", "stain")

ALLOYS: tuple[str, ...] = ("6063", "6082", "5754", "1050")

# Operating limits (lo, hi) in canonical units: the "time outside limits" features count against these.
LIMITS: dict[str, tuple[float, float]] = {
    "melt_temp_c": (700.0, 740.0),
    "casting_speed_mm_s": (1.0, 2.2),
    "mould_level_mm": (46.0, 54.0),
    "cooling_water_flow_l_min": (1250.0, 1800.0),
    "cooling_water_temp_c": (12.0, 28.0),
    "rolling_force_kn": (4000.0, 12500.0),
    "strip_speed_m_min": (240.0, 360.0),
}

# Physically plausible range (lo, hi) in canonical units: a value outside is a sensor fault, and a
# column whose median falls outside is labelled with the wrong unit.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "melt_temp_c": (550.0, 950.0),
    "casting_speed_mm_s": (0.0, 6.0),
    "mould_level_mm": (0.0, 200.0),
    "cooling_water_flow_l_min": (0.0, 6000.0),
    "cooling_water_temp_c": (0.0, 70.0),
    "rolling_force_kn": (0.0, 40000.0),
    "strip_speed_m_min": (0.0, 1500.0),
}

# Signal quantity (tag stem) -> canonical signal name.
SIGNAL_STEMS: dict[str, str] = {
    "melt_temp": "melt_temp_c",
    "casting_speed": "casting_speed_mm_s",
    "mould_level": "mould_level_mm",
    "cooling_water_flow": "cooling_water_flow_l_min",
    "cooling_water_temp": "cooling_water_temp_c",
    "rolling_force": "rolling_force_kn",
    "strip_speed": "strip_speed_m_min",
}

_FAHRENHEIT = (5.0 / 9.0, -32.0 * 5.0 / 9.0)
_CELSIUS = {"c": (1.0, 0.0), "degc": (1.0, 0.0), "f": _FAHRENHEIT, "degf": _FAHRENHEIT, "k": (1.0, -273.15)}

# Unit suffix accepted for each stem -> (scale, offset): canonical = value * scale + offset.
UNIT_SUFFIXES: dict[str, dict[str, tuple[float, float]]] = {
    "melt_temp": _CELSIUS,
    "casting_speed": {"mm_s": (1.0, 0.0), "mm_min": (1.0 / 60.0, 0.0), "m_min": (1000.0 / 60.0, 0.0)},
    "mould_level": {"mm": (1.0, 0.0), "cm": (10.0, 0.0), "in": (25.4, 0.0)},
    "cooling_water_flow": {"l_min": (1.0, 0.0), "m3_h": (1000.0 / 60.0, 0.0), "l_s": (60.0, 0.0)},
    "cooling_water_temp": _CELSIUS,
    "rolling_force": {"kn": (1.0, 0.0), "mn": (1000.0, 0.0), "t": (9.80665, 0.0)},
    "strip_speed": {"m_min": (1.0, 0.0), "m_s": (60.0, 0.0), "ft_min": (0.3048, 0.0)},
}

ID_COLUMNS: tuple[str, ...] = ("timestamp", "part_id", "line", "alloy")  # required in every file
OPTIONAL_COLUMNS: tuple[str, ...] = ("shift", "source_file")

STATS: tuple[str, ...] = ("mean", "std", "min", "max", "slope", "frac_outside", "dropout")

# Numeric feature columns of part_features / keys of window_features_numpy, in model order.
FEATURE_COLUMNS: tuple[str, ...] = tuple(f"{s}__{stat}" for s in SIGNALS for stat in STATS) + ("duration_s",)

CLEAN_COLUMNS: tuple[str, ...] = ("timestamp", "part_id", "line", "alloy", "shift", *SIGNALS, "source_file")
REJECT_COLUMNS: tuple[str, ...] = (
    "source_file", "row", "raw_timestamp", "timestamp", "part_id", "line", "alloy", *SIGNALS, "reason",
)
PART_COLUMNS: tuple[str, ...] = ("part_id", "line", "alloy", "shift", "day", "start", "n_samples")
UNMATCHED_COLUMNS: tuple[str, ...] = ("part_id", "side", "reason")

_TS_WITH_OFFSET = "%Y-%m-%dT%H:%M:%S%.f%#z"
_TS_NAIVE = "%Y-%m-%dT%H:%M:%S%.f"


class SampleSchemaError(ValueError):
    """A historian file that cannot be read as samples at all; the message names file, column and rule."""


class OutcomeSchemaError(ValueError):
    """An outcome table missing a required column."""


def count_column(defect_type: str) -> str:
    """Outcome column holding the defect count of one type."""
    return f"n_{defect_type}"


def target_column(defect_type: str) -> str:
    """Dataset column holding the binary target of one type."""
    return f"y_{defect_type}"


# ----------------------------------------------------------------------------------- schema + units


def resolve_columns(columns: Sequence[str]) -> tuple[dict[str, str], dict[str, tuple[str, float, float]], list[str]]:
    """Map a file's columns to canonical ones.

    Returns (id column -> source column, signal -> (source column, scale, offset), problems); matching
    is case-insensitive and ignores surrounding spaces.
    """
    problems: list[str] = []
    ids: dict[str, str] = {}
    signals: dict[str, tuple[str, float, float]] = {}
    reported: set[str] = set()  # stems with a problem already named
    for source in columns:
        key = source.strip().lower()
        if key in ID_COLUMNS or key in OPTIONAL_COLUMNS:
            if key in ids:
                problems.append(f"columns {ids[key]!r} and {source!r} both name {key!r}")
            ids[key] = source
            continue
        stem = next((s for s in SIGNAL_STEMS if key.startswith(s + "_")), None)
        if stem is None:
            continue  # other historian tags are not ours
        unit = key[len(stem) + 1 :]
        units = UNIT_SUFFIXES[stem]
        if unit not in units:
            problems.append(f"column {source!r}: unit {unit!r} is not known for {stem} (known: {', '.join(units)})")
            reported.add(stem)
            continue
        canonical = SIGNAL_STEMS[stem]
        if canonical in signals:
            problems.append(f"columns {signals[canonical][0]!r} and {source!r} both measure {stem}")
            continue
        signals[canonical] = (source, *units[unit])
    for name in ID_COLUMNS:
        if name not in ids:
            problems.append(f"missing column {name!r} (required)")
    for stem, canonical in SIGNAL_STEMS.items():
        if canonical not in signals and stem not in reported:
            options = ", ".join(f"{stem}_{u}" for u in UNIT_SUFFIXES[stem])
            problems.append(f"missing column for {stem} (required; one of {options})")
    return ids, signals, problems


def read_historian_csv(data: bytes, source: str = "<bytes>") -> "pl.DataFrame":
    """A historian CSV export as an all-string frame (types are decided by normalise_samples)."""
    import polars as pl

    try:
        return pl.read_csv(io.BytesIO(data), infer_schema=False)
    except Exception as exc:  # polars raises several error types for malformed CSV
        raise SampleSchemaError(f"{source}: not a readable CSV file ({type(exc).__name__}: {exc})") from exc


def _parse_timestamp(dtype) -> "pl.Expr":
    """The ``timestamp`` column as UTC datetimes (null where it is missing, unparsable or has no offset)."""
    import polars as pl

    col = pl.col("timestamp")
    if dtype == pl.Utf8:
        return _iso_text(col).str.to_datetime(_TS_WITH_OFFSET, strict=False, time_unit="us", time_zone="UTC")
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return pl.lit(None, pl.Datetime("us", "UTC"))
        return col.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    raise SampleSchemaError(f"column 'timestamp': type {dtype} is neither text nor a datetime")


def _iso_text(text: "pl.Expr") -> "pl.Expr":
    """ISO 8601 text with 'T' between date and time and '+00:00' for 'Z'."""
    return text.str.strip_chars().str.replace(r"^(\d{4}-\d{2}-\d{2})[ ]", "${1}T").str.replace(r"[Zz]$", "+00:00")


def _timestamp_reason() -> "pl.Expr":
    """Why ``raw_timestamp`` did not parse (only evaluated on rejected rows)."""
    import polars as pl

    raw = pl.col("raw_timestamp")
    naive = _iso_text(raw).str.to_datetime(_TS_NAIVE, strict=False, time_unit="us")
    return (
        pl.when(raw.is_null() | (raw.str.strip_chars() == ""))
        .then(pl.lit("missing timestamp"))
        .when(naive.is_not_null())
        .then(pl.format("timestamp '{}' has no UTC offset", raw))
        .otherwise(pl.format("unparsable timestamp '{}'", raw))
    )


def normalise_samples(
    df: "pl.DataFrame",
    *,
    source: str | None = None,
    known_parts: Iterable[str] | None = None,
    now: datetime | None = None,
    future_tolerance_s: float = 300.0,
) -> tuple["pl.DataFrame", "pl.DataFrame"]:
    """Validate one historian file and return (clean samples, rejected rows with a ``reason``).

    Raises SampleSchemaError when the file as a whole is unusable (missing or unknown columns, a
    column whose median is physically implausible, i.e. labelled with the wrong unit). Row problems
    (bad or offset-less timestamps, missing/unknown part ids, future timestamps, implausible values,
    duplicates of an earlier (part_id, timestamp)) move the row to the rejects. Non-numeric values
    ("Bad", "") become missing values (dropouts). Clean rows are sorted by part_id, timestamp.
    """
    import polars as pl

    name = source or "<frame>"
    ids, signals, problems = resolve_columns(df.columns)
    if problems:
        raise SampleSchemaError(f"{name}: " + "; ".join(problems))
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("normalise_samples: now must be timezone-aware")

    frame = df.rename({src: key for key, src in ids.items() if src != key})
    if "source_file" not in frame.columns:
        frame = frame.with_columns(pl.lit(source, pl.Utf8).alias("source_file"))
    if "shift" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.Utf8).alias("shift"))
    ts_expr = _parse_timestamp(frame.schema["timestamp"])

    def text(column: str) -> pl.Expr:
        value = pl.col(column).cast(pl.Utf8).str.strip_chars()
        return pl.when(value == "").then(None).otherwise(value)

    def number(source_column: str, scale: float, offset: float) -> pl.Expr:
        value = pl.col(source_column)
        if frame.schema[source_column] == pl.Utf8:
            value = value.str.strip_chars().cast(pl.Float64, strict=False)
        value = value.cast(pl.Float64).fill_nan(None)
        return value if (scale, offset) == (1.0, 0.0) else value * scale + offset

    frame = frame.with_row_index("row").select(
        pl.col("source_file").cast(pl.Utf8),
        pl.col("row").cast(pl.Int64),
        pl.col("timestamp").cast(pl.Utf8).alias("raw_timestamp"),
        ts_expr.alias("timestamp"),
        text("part_id").alias("part_id"),
        text("line").alias("line"),
        text("alloy").alias("alloy"),
        text("shift").alias("shift"),
        *[number(src, scale, offset).alias(sig) for sig, (src, scale, offset) in signals.items()],
    )

    wrong_units = []
    every = max(1, frame.height // 5000)  # an evenly spaced subsample is enough to judge the unit
    medians = frame.select(pl.col(list(SIGNALS)).gather_every(every).median()).row(0, named=True)
    for sig, median in medians.items():
        lo, hi = PLAUSIBLE[sig]
        if median is not None and not lo <= median <= hi:
            wrong_units.append(
                f"column {signals[sig][0]!r}: median {median:.6g} (as {sig}) is outside the plausible range "
                f"[{lo:g}, {hi:g}] (wrong unit?)"
            )
    if wrong_units:
        raise SampleSchemaError(f"{name}: " + "; ".join(wrong_units))

    # Cheap flags on every row; reason texts are formatted only for the flagged rows.
    limit = now.astimezone(timezone.utc) + timedelta(seconds=future_tolerance_s)
    checks: list[tuple[pl.Expr, pl.Expr]] = [
        (pl.col("timestamp").is_null(), _timestamp_reason()),
        (pl.col("part_id").is_null(), pl.lit("missing part_id")),
    ]
    if known_parts is not None:
        known = pl.Series("known", list(known_parts), dtype=pl.Utf8).implode()
        unknown = pl.format("unknown part_id '{}' (not in the production plan)", pl.col("part_id"))
        checks.append((~pl.col("part_id").is_in(known), unknown))
    checks.append(
        (
            pl.col("timestamp") > pl.lit(limit).cast(pl.Datetime("us", "UTC")),
            pl.format(
                f"timestamp {{}} is in the future (now {now.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ})",
                pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            ),
        )
    )
    for sig in SIGNALS:
        lo, hi = PLAUSIBLE[sig]
        implausible = pl.format(f"{sig}={{}} is outside the plausible range [{lo:g}, {hi:g}]", pl.col(sig))
        checks.append((~pl.col(sig).is_between(lo, hi), implausible))
    flagged = pl.any_horizontal([flag.fill_null(False) for flag, _ in checks])
    frame = frame.with_columns(flagged.alias("_flagged"))
    # rechunk: polars 2.1 panics in pl.format on a filtered frame that kept empty chunks
    bad = frame.filter("_flagged").drop("_flagged").rechunk()
    reason = pl.when(checks[0][0].fill_null(False)).then(checks[0][1])
    for flag, message in checks[1:]:
        reason = reason.when(flag.fill_null(False)).then(message)
    bad = bad.with_columns(reason.otherwise(None).alias("reason"))

    good = frame.filter(~pl.col("_flagged")).drop("_flagged")
    duplicate = ~pl.struct("part_id", "timestamp").is_first_distinct()
    good = good.with_columns(
        pl.when(duplicate)
        .then(pl.lit("duplicate sample: same part_id and timestamp as an earlier row"))
        .otherwise(None)
        .alias("reason")
    )
    rejects = pl.concat([bad, good.filter(pl.col("reason").is_not_null())])
    clean = good.filter(pl.col("reason").is_null()).sort("part_id", "timestamp").select(CLEAN_COLUMNS)
    return clean, rejects.sort("row").select(REJECT_COLUMNS)


def empty_rejects() -> "pl.DataFrame":
    """A reject table with no rows (the schema normalise_samples returns)."""
    import polars as pl

    types = {"row": pl.Int64, "timestamp": pl.Datetime("us", "UTC"), **{s: pl.Float64 for s in SIGNALS}}
    return pl.DataFrame(schema={c: types.get(c, pl.Utf8) for c in REJECT_COLUMNS})


@dataclass(frozen=True)
class NormalisedFiles:
    """Result of normalising a batch of historian files."""

    clean: "pl.DataFrame"
    rejects: "pl.DataFrame"
    file_errors: dict[str, str]  # file name -> why the whole file was quarantined


def normalise_files(
    files: Mapping[str, bytes],
    *,
    known_parts: Iterable[str] | None = None,
    now: datetime | None = None,
    future_tolerance_s: float = 300.0,
) -> NormalisedFiles:
    """Normalise several historian CSV files; a bad file is reported, never stops the good ones.

    Samples repeated across files (same part_id and timestamp) keep the first file's row (files in
    name order); the later ones go to the rejects.
    """
    import polars as pl

    now = now or datetime.now(timezone.utc)
    known = None if known_parts is None else list(known_parts)
    cleans, rejects, errors = [], [empty_rejects()], {}
    for name in sorted(files):
        try:
            frame = read_historian_csv(files[name], name)
            clean, rej = normalise_samples(
                frame, source=name, known_parts=known, now=now, future_tolerance_s=future_tolerance_s
            )
        except SampleSchemaError as exc:
            errors[name] = str(exc)
            continue
        cleans.append(clean)
        rejects.append(rej)
    if not cleans:
        return NormalisedFiles(empty_clean(), pl.concat(rejects), errors)
    combined = pl.concat(cleans).with_row_index("_order")
    repeated = ~pl.struct("part_id", "timestamp").is_first_distinct()
    combined = combined.with_columns(repeated.alias("_repeated"))
    cross = combined.filter("_repeated")
    if cross.height:
        rejects.append(
            cross.select(
                pl.col("source_file"),
                pl.lit(None, pl.Int64).alias("row"),
                pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").alias("raw_timestamp"),
                *[pl.col(c) for c in ("timestamp", "part_id", "line", "alloy", *SIGNALS)],
                pl.lit("duplicate sample: same part_id and timestamp already in an earlier file").alias("reason"),
            )
        )
    clean = combined.filter(~pl.col("_repeated")).sort("part_id", "timestamp").select(CLEAN_COLUMNS)
    return NormalisedFiles(clean, pl.concat(rejects), errors)


def empty_clean() -> "pl.DataFrame":
    """A clean-sample table with no rows."""
    import polars as pl

    types = {"timestamp": pl.Datetime("us", "UTC"), **{s: pl.Float64 for s in SIGNALS}}
    return pl.DataFrame(schema={c: types.get(c, pl.Utf8) for c in CLEAN_COLUMNS})


# ----------------------------------------------------------------------------------------- features


def part_features(clean: "pl.DataFrame", limits: Mapping[str, tuple[float, float]] = LIMITS) -> "pl.DataFrame":
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


def part_features_pandas(clean: "pd.DataFrame", limits: Mapping[str, tuple[float, float]] = LIMITS) -> "pd.DataFrame":
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


# ------------------------------------------------------------------------------ outcomes and join


def outcomes_from_detections(
    detections: "pl.DataFrame",
    inspected_parts: Iterable[str] = (),
    *,
    class_column: str = "class_name",
) -> tuple["pl.DataFrame", "pl.DataFrame"]:
    """Per-part defect counts (part_id, n_<type>...) from one row per detected defect.

    ``inspected_parts`` lists parts inspected without any detection (they get zero counts). Rows
    whose class is not a DEFECT_TYPE or whose part_id is missing are returned as rejects with a reason.
    """
    import polars as pl

    for column in ("part_id", class_column):
        if column not in detections.columns:
            raise OutcomeSchemaError(f"detections: missing column {column!r} (required)")
    rows = detections.select(
        pl.col("part_id").cast(pl.Utf8), pl.col(class_column).cast(pl.Utf8).alias("class_name")
    ).rechunk()  # pl.format below needs one chunk (polars 2.1)
    reason = (
        pl.when(pl.col("part_id").is_null() | (pl.col("part_id") == ""))
        .then(pl.lit("missing part_id"))
        .when(~pl.col("class_name").is_in(list(DEFECT_TYPES)))
        .then(pl.format("class '{}' is not a process defect type", pl.col("class_name")))
    )
    rows = rows.with_columns(reason.otherwise(None).alias("reason"))
    good = rows.filter(pl.col("reason").is_null())
    parts = pl.concat(
        [good.select("part_id"), pl.DataFrame({"part_id": list(inspected_parts)}, schema={"part_id": pl.Utf8})]
    ).unique()
    counts = good.group_by("part_id").agg(
        (pl.col("class_name") == t).sum().cast(pl.Int64).alias(count_column(t)) for t in DEFECT_TYPES
    )
    outcomes = parts.join(counts, on="part_id", how="left").with_columns(
        pl.col(count_column(t)).fill_null(0) for t in DEFECT_TYPES
    )
    return outcomes.sort("part_id"), rows.filter(pl.col("reason").is_not_null())


def join_outcomes(features: "pl.DataFrame", outcomes: "pl.DataFrame") -> tuple["pl.DataFrame", "pl.DataFrame"]:
    """(dataset, unmatched): features joined with outcomes per part, plus binary y_<type> targets.

    Parts on one side only, outcome rows repeated for one part, and null or negative counts are
    returned in ``unmatched`` (part_id, side, reason) instead of the dataset.
    """
    import polars as pl

    missing = [c for c in ("part_id", *map(count_column, DEFECT_TYPES)) if c not in outcomes.columns]
    if missing:
        raise OutcomeSchemaError(f"outcomes: missing column(s) {', '.join(map(repr, missing))} (required)")
    if features["part_id"].is_duplicated().any():
        raise ValueError("features: part_id must be unique (one row per part)")
    counts = [count_column(t) for t in DEFECT_TYPES]
    out = outcomes.select(pl.col("part_id").cast(pl.Utf8), *[pl.col(c).cast(pl.Int64) for c in counts]).rechunk()
    reason = pl.when(pl.col("part_id").is_duplicated()).then(
        pl.format("part_id appears {} times in the outcomes", pl.len().over("part_id"))
    )
    for c in counts:
        reason = reason.when(pl.col(c).is_null()).then(pl.lit(f"null {c}"))
        reason = reason.when(pl.col(c) < 0).then(pl.format(f"negative {c} ({{}})", pl.col(c)))
    out = out.with_columns(reason.otherwise(None).alias("reason"))
    bad = out.filter(pl.col("reason").is_not_null()).unique("part_id", keep="first", maintain_order=True).rechunk()
    good = out.filter(pl.col("reason").is_null()).drop("reason")
    bad_ids = bad["part_id"].implode()

    dataset = features.join(good, on="part_id", how="inner").with_columns(
        (pl.col(count_column(t)) > 0).cast(pl.Int8).alias(target_column(t)) for t in DEFECT_TYPES
    )
    sort_keys = ["day", "part_id"] if "day" in dataset.columns else ["part_id"]
    features_only = features.filter(~pl.col("part_id").is_in(out["part_id"].implode())).select(
        "part_id", pl.lit("features").alias("side"), pl.lit("no inspection outcome for this part").alias("reason")
    )
    features_bad = features.filter(pl.col("part_id").is_in(bad_ids)).select("part_id").join(
        bad.select("part_id", "reason"), on="part_id"
    ).select("part_id", pl.lit("outcomes").alias("side"), "reason")
    outcomes_only = good.filter(~pl.col("part_id").is_in(features["part_id"].implode())).select(
        "part_id",
        pl.lit("outcomes").alias("side"),
        pl.lit("no sensor features for this part_id (unknown part)").alias("reason"),
    )
    bad_unknown = bad.filter(~pl.col("part_id").is_in(features["part_id"].implode())).select(
        "part_id", pl.lit("outcomes").alias("side"), pl.format("{}; no sensor features for this part_id", "reason")
    )
    unmatched = pl.concat([features_only, features_bad, outcomes_only, bad_unknown]).sort("side", "part_id")
    return dataset.sort(sort_keys), unmatched.select(UNMATCHED_COLUMNS)


# --------------------------------------------------------------------------------------- time split


@dataclass(frozen=True)
class DaySplit:
    """Days of each split, in time order: train, then validation, then the hold-out test days."""

    train_days: tuple[date, ...]
    val_days: tuple[date, ...]
    test_days: tuple[date, ...]

    def name_of(self, day: date) -> str | None:
        """Split name of a day, None for a day in no split."""
        for name, days in (("train", self.train_days), ("val", self.val_days), ("test", self.test_days)):
            if day in days:
                return name
        return None

    def assign(self, dataset: "pl.DataFrame") -> "pl.DataFrame":
        """The dataset with a ``split`` column (train | val | test)."""
        import polars as pl

        expr = pl.when(pl.col("day").is_in(list(self.train_days))).then(pl.lit("train"))
        expr = expr.when(pl.col("day").is_in(list(self.val_days))).then(pl.lit("val"))
        expr = expr.when(pl.col("day").is_in(list(self.test_days))).then(pl.lit("test"))
        return dataset.with_columns(expr.otherwise(None).alias("split"))

    def rows(self, dataset: "pl.DataFrame", name: str) -> "pl.DataFrame":
        """The rows of one split ("train", "val" or "test")."""
        import polars as pl

        days = {"train": self.train_days, "val": self.val_days, "test": self.test_days}
        if name not in days:
            raise ValueError(f"split {name!r}: must be one of train, val, test")
        return dataset.filter(pl.col("day").is_in(list(days[name])))

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "train_days": [d.isoformat() for d in self.train_days],
            "val_days": [d.isoformat() for d in self.val_days],
            "test_days": [d.isoformat() for d in self.test_days],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[str]]) -> "DaySplit":
        return cls(*(tuple(date.fromisoformat(d) for d in data[k]) for k in ("train_days", "val_days", "test_days")))


def time_split(dataset: "pl.DataFrame", *, val_days: int = 1, test_days: int = 1) -> DaySplit:
    """Split by production day: the last ``test_days`` are held out, the ``val_days`` before them validate."""
    if "day" not in dataset.columns:
        raise ValueError("time_split: dataset has no 'day' column")
    if val_days < 1 or test_days < 1:
        raise ValueError("time_split: val_days and test_days must be at least 1")
    days = sorted(d for d in dataset["day"].unique().to_list() if d is not None)
    needed = val_days + test_days + 1
    if len(days) < needed:
        raise ValueError(
            f"time_split: {len(days)} day(s) of data, need at least val_days + test_days + 1 = {needed}"
        )
    n_train = len(days) - val_days - test_days
    return DaySplit(tuple(days[:n_train]), tuple(days[n_train : n_train + val_days]), tuple(days[n_train + val_days :]))
