"""Plant sensor samples: the canonical schema and the unit/time normalisation of historian CSV exports.

Defines the canonical signals (``SIGNALS``), their operating limits (``LIMITS``) and plausible ranges, the
unit suffixes a historian tag may carry, and the clean/reject table schemas. ``normalise_samples`` and
``normalise_files`` turn historian files into clean samples in canonical units and UTC, quarantining
bad rows (with a reason) and unusable files (``SampleSchemaError``).

The module imports nothing beyond the standard library at load time (polars is imported where used).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

CLEAN_COLUMNS: tuple[str, ...] = ("timestamp", "part_id", "line", "alloy", "shift", *SIGNALS, "source_file")
REJECT_COLUMNS: tuple[str, ...] = (
    "source_file",
    "row",
    "raw_timestamp",
    "timestamp",
    "part_id",
    "line",
    "alloy",
    *SIGNALS,
    "reason",
)

_TS_WITH_OFFSET = "%Y-%m-%dT%H:%M:%S%.f%#z"
_TS_NAIVE = "%Y-%m-%dT%H:%M:%S%.f"


class SampleSchemaError(ValueError):
    """A historian file that cannot be read as samples at all; the message names file, column and rule."""


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


def read_historian_csv(data: bytes, source: str = "<bytes>") -> pl.DataFrame:
    """A historian CSV export as an all-string frame (types are decided by normalise_samples)."""
    import polars as pl

    try:
        return pl.read_csv(io.BytesIO(data), infer_schema=False)
    except Exception as exc:  # polars raises several error types for malformed CSV
        raise SampleSchemaError(f"{source}: not a readable CSV file ({type(exc).__name__}: {exc})") from exc


def _parse_timestamp(dtype) -> pl.Expr:
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


def _iso_text(text: pl.Expr) -> pl.Expr:
    """ISO 8601 text with 'T' between date and time and '+00:00' for 'Z'."""
    return text.str.strip_chars().str.replace(r"^(\d{4}-\d{2}-\d{2})[ ]", "${1}T").str.replace(r"[Zz]$", "+00:00")


def _timestamp_reason() -> pl.Expr:
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
    df: pl.DataFrame,
    *,
    source: str | None = None,
    known_parts: Iterable[str] | None = None,
    now: datetime | None = None,
    future_tolerance_s: float = 300.0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
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
    now = now or datetime.now(UTC)
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
    limit = now.astimezone(UTC) + timedelta(seconds=future_tolerance_s)
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
                f"timestamp {{}} is in the future (now {now.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ})",
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


def empty_rejects() -> pl.DataFrame:
    """A reject table with no rows (the schema normalise_samples returns)."""
    import polars as pl

    types = {"row": pl.Int64, "timestamp": pl.Datetime("us", "UTC"), **{s: pl.Float64 for s in SIGNALS}}
    return pl.DataFrame(schema={c: types.get(c, pl.Utf8) for c in REJECT_COLUMNS})


@dataclass(frozen=True)
class NormalisedFiles:
    """Result of normalising a batch of historian files."""

    clean: pl.DataFrame
    rejects: pl.DataFrame
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

    now = now or datetime.now(UTC)
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


def empty_clean() -> pl.DataFrame:
    """A clean-sample table with no rows."""
    import polars as pl

    types = {"timestamp": pl.Datetime("us", "UTC"), **{s: pl.Float64 for s in SIGNALS}}
    return pl.DataFrame(schema={c: types.get(c, pl.Utf8) for c in CLEAN_COLUMNS})
