"""A simulated casting and rolling plant: 1 Hz plant sensor samples per part and inspection outcomes.

Each production line casts and rolls parts (coils) one after another through the day. The process
state drifts slowly (furnace temperature wanders and overheats now and then, cooling-water filters
clog during the day, cooling-water temperature follows the weather and the time of day, rolls wear),
operators push casting speed (more often on the night shift), and each part may show mould-level
oscillation, roll-force chatter or strip-speed spikes. Sensors add noise and drop out in bursts.

Defects follow ``defect_intensity``: thresholded interactions of the true process conditions, not a
linear score (see its docstring). Counts per part are Poisson draws of those intensities.

``historian_export`` writes what a plant historian would: one wide CSV per day and line, each line
with its own tag units, timestamp style and bad-value token, and can inject faults for tests.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from alumi_pipelines.lib.plant.dataset import ALLOYS, DEFECT_TYPES, count_column
from alumi_pipelines.lib.plant.samples import SIGNAL_STEMS, SIGNALS, UNIT_SUFFIXES

if TYPE_CHECKING:
    import polars as pl

__all__ = ["ALLOYS", "DEFECT_TYPES", "FAULTS", "LINES", "SimulatedPlant", "defect_intensity", "simulate_days"]

LINES: tuple[str, ...] = ("L1", "L2", "L3")
PLANT_TIMEZONE = "Europe/Berlin"
DAY_SECONDS = 86_400

ALLOY_SHARE = {"6063": 0.35, "6082": 0.25, "5754": 0.2, "1050": 0.2}
CASTING_SPEED_MM_S = {"6063": 1.8, "6082": 1.4, "5754": 1.25, "1050": 2.0}  # nominal per alloy
ROLLING_FORCE_KN = {"6063": 8000.0, "6082": 9500.0, "5754": 10500.0, "1050": 6000.0}
CRACK_SENSITIVITY = {"6082": 1.0, "5754": 0.9, "6063": 0.15, "1050": 0.0}
DENT_MOULD_AMPLITUDE_MM = {"1050": 2.0, "6063": 3.0, "6082": 3.5, "5754": 3.5}  # soft alloys dent sooner

# How each line's historian exports: tag per signal (others canonical), timestamp style, bad-value token.
LINE_FORMATS: dict[str, dict] = {
    "L1": {"tags": {}, "timestamp": "local_offset", "null": "", "header": str},
    "L2": {
        "tags": {"melt_temp_c": "melt_temp_degF", "cooling_water_temp_c": "cooling_water_temp_degF"},
        "timestamp": "utc_z",
        "null": "",
        "header": str,
    },
    "L3": {
        "tags": {
            "casting_speed_mm_s": "casting_speed_mm_min",
            "strip_speed_m_min": "strip_speed_m_s",
            "rolling_force_kn": "rolling_force_t",
        },
        "timestamp": "local_offset_space",
        "null": "Bad",
        "header": str.title,
    },
}

FAULTS: tuple[str, ...] = (
    "missing_column",  # the rolling-force tag is not exported (whole file unusable)
    "unknown_unit",  # the melt temperature tag carries a unit nobody knows (whole file unusable)
    "wrong_units",  # melt temperature in degF under a degC tag (whole file unusable)
    "nan_burst",  # 60 s of every signal missing for one part, and one signal missing for a whole part
    "future_timestamps",  # 5 samples stamped a year ahead
    "out_of_order",  # rows shuffled
    "duplicates",  # 6 rows exported twice
    "unknown_parts",  # 20 samples of a part id not in the production plan
    "implausible_values",  # 3 melt temperature readings of -9999
    "unparsable_timestamps",  # 2 timestamps that are not timestamps
    "naive_timestamps",  # 2 timestamps without UTC offset
)
_FILE_FAULTS = {"missing_column", "unknown_unit", "wrong_units"}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def defect_intensity(conditions: Mapping[str, float], alloy: str) -> dict[str, float]:
    """Expected defect count per type for one part's true process conditions (the plant's ground truth).

    conditions: melt_mean (degC), flow_mean (L/min), speed_ratio (casting speed / alloy nominal),
    cwt_mean (cooling-water degC), mould_amplitude (mm of mould-level oscillation), strip_spike
    (largest strip-speed spike / normal speed), force_cv (rolling-force noise / mean).

    - pit (porosity): hot melt AND low cooling flow, both needed;
    - crack: pushed casting speed AND cold cooling water, only for crack-sensitive alloys (6082, 5754);
    - scratch: strip-speed spikes OR rolling-force chatter;
    - stain: hot cooling water, much worse when the flow is also low;
    - dent: mould-level oscillation above an alloy-dependent amplitude (soft 1050 dents first).
    """
    c = conditions
    hot_melt = _sigmoid((c["melt_mean"] - 731.0) / 2.0)
    pushed = _sigmoid((c["speed_ratio"] - 1.10) / 0.015)
    cold_water = _sigmoid((20.0 - c["cwt_mean"]) / 0.7)
    hot_water = _sigmoid((c["cwt_mean"] - 26.5) / 0.6)
    return {
        "pit": 0.03 + 2.5 * hot_melt * _sigmoid((1380.0 - c["flow_mean"]) / 25.0),
        "crack": 0.02 + 2.8 * CRACK_SENSITIVITY[alloy] * pushed * cold_water,
        "scratch": 0.03
        + 1.8 * _sigmoid((c["strip_spike"] - 1.22) / 0.02)
        + 1.5 * _sigmoid((c["force_cv"] - 0.045) / 0.004),
        "stain": 0.02 + 2.2 * hot_water * (0.25 + 0.75 * _sigmoid((1450.0 - c["flow_mean"]) / 30.0)),
        "dent": 0.03 + 2.0 * _sigmoid((c["mould_amplitude"] - DENT_MOULD_AMPLITUDE_MM[alloy]) / 0.25),
    }


@dataclass(frozen=True)
class HistorianExport:
    """Historian CSV files (relative name -> bytes) and what was injected into them."""

    files: dict[str, bytes]
    injected: dict[str, dict]  # fault -> {"file": name, "rows": count, ...}


def historian_file_name(day: date, line: str) -> str:
    """Relative name of the historian export of one day and line."""
    return f"{day.isoformat()}/historian_{line}.csv"


@dataclass(frozen=True)
class SimulatedPlant:
    """Samples (canonical units, UTC), the production plan, true conditions and inspection outcomes."""

    start: date
    days: int
    seed: int
    samples: pl.DataFrame  # timestamp, part_id, line, alloy, shift, SIGNALS (null = dropout)
    parts: pl.DataFrame  # part_id, day, line, alloy, start, end, n_samples: the production plan
    conditions: pl.DataFrame  # part_id, true conditions, lambda_<type>
    outcomes: pl.DataFrame  # part_id, day, line, alloy, n_<type>
    lines: tuple[str, ...] = field(default=LINES)

    @property
    def known_parts(self) -> list[str]:
        return self.parts["part_id"].to_list()

    def historian_files(self, faults: Iterable[str] = (), fault_file: str | None = None) -> dict[str, bytes]:
        """CSV bytes per relative file name, as the historian exports them (faults as in historian_export)."""
        return self.historian_export(faults, fault_file).files

    def historian_export(self, faults: Iterable[str] = (), fault_file: str | None = None) -> HistorianExport:
        """Export per day and line; ``faults`` (names from FAULTS) go into ``fault_file`` (default: the first)."""
        import polars as pl

        faults = tuple(faults)
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
        by_day = self.samples.with_columns(pl.col("timestamp").dt.date().alias("_day"))
        names = {}
        for offset in range(self.days):
            day = self.start + timedelta(days=offset)
            for line in self.lines:
                names[historian_file_name(day, line)] = (day, line)
        if faults and fault_file is None:
            fault_file = sorted(names)[0]
        if faults and fault_file not in names:
            raise ValueError(f"fault_file {fault_file!r} is not one of the exported files")
        files, injected = {}, {}
        for name, (day, line) in sorted(names.items()):
            rows = by_day.filter((pl.col("_day") == day) & (pl.col("line") == line)).drop("_day")
            file_faults = faults if name == fault_file else ()
            files[name] = _export_file(rows, line, file_faults, injected, name, self.seed)
        return HistorianExport(files, injected)


def _export_units(line: str) -> dict[str, tuple[str, float, float]]:
    """signal -> (historian tag, scale, offset) with canonical = value * scale + offset."""
    stems = {canonical: stem for stem, canonical in SIGNAL_STEMS.items()}
    out = {}
    for sig in SIGNALS:
        tag = LINE_FORMATS[line]["tags"].get(sig, sig)
        stem = stems[sig]
        scale, offset = UNIT_SUFFIXES[stem][tag.lower()[len(stem) + 1 :]]
        out[sig] = (tag, scale, offset)
    return out


def _export_file(rows: pl.DataFrame, line: str, faults: tuple[str, ...], injected: dict, name: str, seed: int) -> bytes:
    import polars as pl

    fmt = LINE_FORMATS[line]
    units = _export_units(line)
    rng = np.random.default_rng([seed, 7919, sum(map(ord, name))])
    frame = rows.select(
        pl.col("timestamp").alias("_ts"),
        "part_id",
        "alloy",
        "line",
        "shift",
        *[((pl.col(sig) - offset) / scale).round(4).alias(tag) for sig, (tag, scale, offset) in units.items()],
    )
    tags = [tag for tag, _, _ in units.values()]
    melt_tag = units["melt_temp_c"][0]

    def log(fault: str, **info) -> None:
        injected[fault] = {"file": name, **info}

    if "nan_burst" in faults:
        part_ids = frame["part_id"].unique(maintain_order=True)
        burst_part, whole_part = part_ids[0], part_ids[min(1, len(part_ids) - 1)]
        idx = pl.int_range(pl.len()).over("part_id")
        in_burst = (pl.col("part_id") == burst_part) & (idx >= 10) & (idx < 70)
        frame = frame.with_columns(pl.when(in_burst).then(None).otherwise(pl.col(t)).alias(t) for t in tags)
        whole_tag = units["cooling_water_flow_l_min"][0]
        frame = frame.with_columns(
            pl.when(pl.col("part_id") == whole_part).then(None).otherwise(pl.col(whole_tag)).alias(whole_tag)
        )
        log(
            "nan_burst",
            part_id=burst_part,
            rows=60,
            whole_signal_part=whole_part,
            whole_signal="cooling_water_flow_l_min",
        )
    if "implausible_values" in faults:
        picks = np.sort(rng.choice(frame.height, 3, replace=False))
        mask = pl.int_range(pl.len()).is_in(picks.tolist())
        frame = frame.with_columns(pl.when(mask).then(-9999.0).otherwise(pl.col(melt_tag)).alias(melt_tag))
        log("implausible_values", rows=3)
    if "future_timestamps" in faults:
        picks = np.sort(rng.choice(frame.height, 5, replace=False))
        mask = pl.int_range(pl.len()).is_in(picks.tolist())
        frame = frame.with_columns(
            pl.when(mask).then(pl.col("_ts") + pl.duration(days=365)).otherwise(pl.col("_ts")).alias("_ts")
        )
        log("future_timestamps", rows=5)
    if "unknown_parts" in faults:
        first = frame["part_id"][0]
        stranger = (
            frame.filter(pl.col("part_id") == first)
            .head(20)
            .with_columns(pl.lit(f"{line}-UNPLANNED-0001").alias("part_id"))
        )
        frame = pl.concat([frame, stranger])
        log("unknown_parts", rows=stranger.height, part_id=f"{line}-UNPLANNED-0001")
    if "duplicates" in faults:
        picks = np.sort(rng.choice(frame.height, 6, replace=False))
        frame = pl.concat([frame, frame.select(pl.all().gather(picks.tolist()))])
        log("duplicates", rows=6)
    if "out_of_order" in faults:
        frame = frame.select(pl.all().gather(rng.permutation(frame.height).tolist()))
        log("out_of_order", rows=frame.height)
    if "wrong_units" in faults:
        if melt_tag.lower().endswith("degf"):
            frame = frame.rename({melt_tag: "melt_temp_c"})
        else:
            frame = frame.with_columns((pl.col(melt_tag) * 9.0 / 5.0 + 32.0).round(4).alias(melt_tag))
        melt_tag = "melt_temp_c"
        log("wrong_units", column=melt_tag)
    if "unknown_unit" in faults:
        frame = frame.rename({melt_tag: "melt_temp_rankine"})
        log("unknown_unit", column="melt_temp_rankine")
    if "missing_column" in faults:
        dropped = units["rolling_force_kn"][0]
        frame = frame.drop(dropped)
        log("missing_column", column=dropped)

    local = pl.col("_ts").dt.convert_time_zone(PLANT_TIMEZONE)
    if fmt["timestamp"] == "utc_z":
        stamp = pl.col("_ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    elif fmt["timestamp"] == "local_offset_space":
        stamp = local.dt.strftime("%Y-%m-%d %H:%M:%S%:z")
    else:
        stamp = local.dt.strftime("%Y-%m-%dT%H:%M:%S%:z")
    frame = frame.with_columns(stamp.alias("timestamp")).drop("_ts")
    for fault, text in (("unparsable_timestamps", "not-a-time"), ("naive_timestamps", None)):
        if fault in faults:
            picks = np.sort(rng.choice(frame.height, 2, replace=False))
            mask = pl.int_range(pl.len()).is_in(picks.tolist())
            new = pl.lit(text) if text else local_naive(frame)
            frame = frame.with_columns(pl.when(mask).then(new).otherwise(pl.col("timestamp")).alias("timestamp"))
            log(fault, rows=2)
    ids = ["timestamp", "part_id", "alloy", "line", "shift"]
    tag_columns = [c for c in frame.columns if c not in ids]
    columns = tag_columns + ids if line == "L3" else ids + tag_columns  # L3 exports its tags first
    frame = frame.select(columns).rename({c: fmt["header"](c) if c in ids else c for c in columns})
    buffer = io.BytesIO()
    frame.write_csv(buffer, null_value=fmt["null"], float_precision=4)
    return buffer.getvalue()


def local_naive(frame: pl.DataFrame) -> pl.Expr:
    """The frame's formatted timestamps with their UTC offset (or Z) cut off."""
    import polars as pl

    return pl.col("timestamp").str.replace(r"(Z|[+-]\d{2}:\d{2})$", "")


# ---------------------------------------------------------------------------------------- simulation


@dataclass
class _Part:
    part_id: str
    day: date
    line: str
    alloy: str
    start_s: int  # seconds after midnight UTC
    n: int
    conditions: dict[str, float]
    series: dict[str, np.ndarray]


def _alloy_campaigns(rng: np.random.Generator, n: int) -> list[str]:
    alloys, shares = list(ALLOY_SHARE), np.array(list(ALLOY_SHARE.values()))
    out: list[str] = []
    while len(out) < n:
        out += [alloys[rng.choice(len(alloys), p=shares)]] * int(rng.integers(6, 25))
    return out[:n]


def _local_hour(second: float) -> float:
    """Hour of day in plant-local time from seconds after midnight UTC (winter offset, enough for shift effects)."""
    return (second / 3600.0 + 1.0) % 24.0


def _simulate_line_day(
    seed: int, day_index: int, day: date, line_index: int, line: str, n_parts: int, weather: float
) -> list[_Part]:
    rng = np.random.default_rng([seed, day_index, line_index])
    durations = rng.integers(60, 301, n_parts)
    margin = 120
    spare = DAY_SECONDS - 2 * margin - int(durations.sum()) - 10 * n_parts
    if spare < 0:
        raise ValueError(
            f"{n_parts} parts of 60-300 s do not fit in one day on line {line}; lower parts_per_day or add lines"
        )
    weights = rng.exponential(1.0, n_parts + 1)
    gaps = 10 + np.floor(spare * weights[:n_parts] / weights.sum()).astype(int)
    starts = margin + np.concatenate([[0], np.cumsum(durations[:-1])]) + np.cumsum(gaps)
    alloys = _alloy_campaigns(rng, n_parts)
    clog = rng.uniform(0.0, 500.0)  # L/min of cooling flow lost to filter clogging by the end of the day
    wear = rng.uniform(0.0, 0.06)  # relative rolling-force rise over the day as rolls wear
    melt_level, overheat_left, overheat = 721.0 + rng.normal(0, 4), 0, 0.0
    parts = []
    for i in range(n_parts):
        n, start, alloy = int(durations[i]), int(starts[i]), alloys[i]
        frac_day = (start + n / 2) / DAY_SECONDS
        hour = _local_hour(start)
        night = hour >= 22 or hour < 6
        # Slow process state, part to part.
        melt_level = 721.0 + 0.85 * (melt_level - 721.0) + rng.normal(0, 6.0 * math.sqrt(1 - 0.85**2))
        if overheat_left == 0 and rng.random() < 0.035:
            overheat_left, overheat = int(rng.integers(4, 16)), rng.uniform(10.0, 22.0)
        melt = melt_level + (overheat if overheat_left > 0 else 0.0)
        overheat_left = max(0, overheat_left - 1)
        flow = 1560.0 - clog * frac_day + rng.normal(0, 45.0)
        cwt = 21.0 + weather + 5.5 * math.sin(2 * math.pi * (frac_day * 24 - 9.0) / 24) + rng.normal(0, 0.6)
        push = rng.random() < (0.35 if night else 0.18)
        speed_ratio = (1.0 + rng.normal(0, 0.035)) * (rng.uniform(1.12, 1.25) if push else 1.0)
        speed = CASTING_SPEED_MM_S[alloy] * speed_ratio
        mould_amp = rng.uniform(2.0, 6.0) if rng.random() < 0.14 else 0.0
        chatter = rng.random() < 0.12
        force_cv = rng.uniform(0.045, 0.09) if chatter else 0.012
        force = ROLLING_FORCE_KN[alloy] * (1 + rng.normal(0, 0.02)) * (1 + wear * frac_day)
        strip = 300.0 + rng.normal(0, 6.0)

        # Within-part series: true process plus sensor noise.
        t = np.arange(n, dtype=np.float64)
        melt_slope = rng.normal(0, 0.02)
        series = {
            "melt_temp_c": melt + melt_slope * (t - (n - 1) / 2) + rng.normal(0, 1.2, n),
            "casting_speed_mm_s": speed + rng.normal(0, 0.02, n),
            "mould_level_mm": 50.0
            + rng.normal(0, 0.4)
            + mould_amp * np.sin(2 * np.pi * t / rng.uniform(15, 45) + rng.uniform(0, 2 * np.pi))
            + rng.normal(0, 0.6, n),
            "cooling_water_flow_l_min": flow + rng.normal(0, 0.3) * (t - (n - 1) / 2) + rng.normal(0, 15.0, n),
            "cooling_water_temp_c": cwt + rng.normal(0, 0.15, n),
            "rolling_force_kn": force * (1 + rng.normal(0, force_cv, n)),
            "strip_speed_m_min": strip + rng.normal(0, 2.0, n),
        }
        spike = 1.0
        if rng.random() < 0.15:
            for _ in range(int(rng.integers(1, 4))):
                height = rng.uniform(1.1, 1.45)
                at, width = int(rng.integers(0, n)), int(rng.integers(3, 9))
                series["strip_speed_m_min"][at : at + width] *= height
                spike = max(spike, height)
        for sig in SIGNALS:  # sensor dropouts: NaN bursts, rarely a whole part
            u = rng.random()
            if u < 0.004:
                series[sig][:] = np.nan
            elif u < 0.06:
                length = int(rng.integers(5, 41))
                at = int(rng.integers(0, n - length + 1))
                series[sig][at : at + length] = np.nan
        conditions = {
            "melt_mean": melt,
            "flow_mean": flow,
            "speed_ratio": speed_ratio,
            "cwt_mean": cwt,
            "mould_amplitude": mould_amp,
            "strip_spike": spike,
            "force_cv": force_cv,
        }
        part_id = f"{line}-{day:%Y%m%d}-{i + 1:04d}"
        parts.append(_Part(part_id, day, line, alloy, start, n, conditions, series))
    return parts


def simulate_days(
    start: date, days: int, parts_per_day: int, seed: int, lines: tuple[str, ...] = LINES
) -> SimulatedPlant:
    """Simulate ``days`` production days from ``start`` with ``parts_per_day`` parts over all lines.

    Deterministic by seed; each (day, line) has its own random stream, so adding days or lines does not
    change the ones already there.
    """
    import polars as pl

    if days < 1 or parts_per_day < len(lines):
        raise ValueError(f"simulate_days: need days >= 1 and parts_per_day >= {len(lines)} (one per line)")
    unknown_lines = [line for line in lines if line not in LINE_FORMATS]
    if unknown_lines:
        raise ValueError(f"simulate_days: unknown line(s) {unknown_lines}; known: {', '.join(LINE_FORMATS)}")
    parts: list[_Part] = []
    for d in range(days):
        day = start + timedelta(days=d)
        weather = float(np.random.default_rng([seed, d, 1_000_003]).normal(0, 2.5))
        for li, line in enumerate(lines):
            n_parts = parts_per_day // len(lines) + (1 if li < parts_per_day % len(lines) else 0)
            parts += _simulate_line_day(seed, d, day, li, line, n_parts, weather)
    parts.sort(key=lambda p: p.part_id)

    midnight = {p.day: int(datetime(p.day.year, p.day.month, p.day.day, tzinfo=UTC).timestamp()) for p in parts}
    lengths = np.array([p.n for p in parts])
    owner = np.repeat(np.arange(len(parts)), lengths)
    offsets = np.concatenate([np.arange(p.n) for p in parts])
    starts = np.array([midnight[p.day] + p.start_s for p in parts], dtype=np.int64)
    ts_us = (starts[owner] + offsets) * 1_000_000
    part_ids = pl.Series("part_id", [p.part_id for p in parts])
    samples = pl.DataFrame(
        {
            "timestamp": pl.Series(ts_us).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "part_id": part_ids.gather(owner),
            "line": pl.Series([p.line for p in parts]).gather(owner),
            "alloy": pl.Series([p.alloy for p in parts]).gather(owner),
            **{sig: np.concatenate([p.series[sig] for p in parts]) for sig in SIGNALS},
        }
    )
    local_hour = pl.col("timestamp").dt.convert_time_zone(PLANT_TIMEZONE).dt.hour()
    samples = samples.with_columns(
        pl.when((local_hour >= 22) | (local_hour < 6))
        .then(pl.lit("C"))
        .when(local_hour < 14)
        .then(pl.lit("A"))
        .otherwise(pl.lit("B"))
        .alias("shift"),
        *[pl.col(sig).fill_nan(None) for sig in SIGNALS],
    ).select("timestamp", "part_id", "line", "alloy", "shift", *SIGNALS)

    plan = pl.DataFrame(
        {
            "part_id": part_ids,
            "day": [p.day for p in parts],
            "line": [p.line for p in parts],
            "alloy": [p.alloy for p in parts],
            "start": pl.Series(starts * 1_000_000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "end": pl.Series((starts + lengths - 1) * 1_000_000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "n_samples": lengths.astype(np.int64),
        }
    )
    rng = np.random.default_rng([seed, 424_242])
    lambdas = [defect_intensity(p.conditions, p.alloy) for p in parts]
    counts = {t: rng.poisson([lam[t] for lam in lambdas]).astype(np.int64) for t in DEFECT_TYPES}
    condition_names = list(parts[0].conditions) if parts else []
    conditions = pl.DataFrame(
        {
            "part_id": part_ids,
            **{k: [p.conditions[k] for p in parts] for k in condition_names},
            **{f"lambda_{t}": [lam[t] for lam in lambdas] for t in DEFECT_TYPES},
        }
    )
    outcomes = plan.select("part_id", "day", "line", "alloy").with_columns(
        pl.Series(count_column(t), counts[t]) for t in DEFECT_TYPES
    )
    return SimulatedPlant(start, days, seed, samples, plan, conditions, outcomes, tuple(lines))
