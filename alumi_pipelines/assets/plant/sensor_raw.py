"""``plant_sensor_raw`` (group ``plant_raw``): a day's historian exports → clean samples, the rest quarantined.

:func:`ingest_plant_day` does the work (landing → raw + quarantine, one day). :func:`write_plant_demo` lands
simulated days in this stage's landing folder (``alumi plant-demo-data``); :func:`plant_days_tags` covers every
landed day as one partition range (``alumi plant-days``).
"""

import datetime as dt
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from alumi_pipelines.assets.metadata import md_table
from alumi_pipelines.partitions import ingestion_backfill, plant_days
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake

GROUP = "plant_raw"
FLAG_DROPOUT_SHARE = 0.5  # a part whose signal misses at least this share of samples is flagged


@asset(
    partitions_def=plant_days,
    backfill_policy=ingestion_backfill,
    group_name=GROUP,
    owners=["team:data-engineering"],
    kinds={"polars", "parquet"},
    description="Historian exports of a day (landing/plant/<day>/*.csv) validated and normalised: tags mapped "
    "to canonical signals and units, timestamps to UTC, non-numeric values to dropouts, rows sorted per part. "
    "Rows with bad, offset-less or future timestamps, unknown part ids (against the day's production plan), "
    "implausible values or duplicates go to quarantine/plant/<day>/rejects.parquet with their reason; "
    "unusable files (missing columns, unknown or wrong units) are refused whole, with the reason.",
    check_specs=[
        AssetCheckSpec(
            "plant_samples_valid",
            asset="plant_sensor_raw",
            blocking=True,
            description="Great Expectations suite on the clean samples: ids present, known alloys, values "
            "plausible, each signal present in at least 80% of samples, (part_id, timestamp) unique and "
            "timestamps strictly increasing per part. Failing stops the features and the model.",
        ),
        AssetCheckSpec(
            "plant_sensor_quarantine",
            asset="plant_sensor_raw",
            blocking=False,
            description="Warns when a historian file was refused whole or more than 5% of the rows were "
            "rejected: the quarantine needs a look.",
        ),
    ],
)
def plant_sensor_raw(context: AssetExecutionContext, lake: Lake):
    from alumi_pipelines.lib.plant.quality import validate_plant_samples

    now = dt.datetime.now(dt.UTC)
    days = list(context.partition_keys)
    results = [ingest_plant_day(lake, day, now) for day in days]
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
        context.log.info(
            f"{r.day}: {len(r.files)} files, {r.samples} samples of {r.parts} parts, "
            f"{r.rejected} rows quarantined, {len(r.flagged)} part signals flagged; {plan}"
        )
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
        "reject_reasons": MetadataValue.md(
            md_table(["reason", "rows"], [[k, n] for k, n in reasons.items()]) if reasons else "_none_"
        ),
        "refused": MetadataValue.md(
            md_table(["file", "reason"], [[k, v] for k, v in file_errors.items()]) if file_errors else "_none_"
        ),
        "flagged": MetadataValue.md(
            md_table(["part", "signal", "reason"], [[f["part_id"], f["signal"], f["reason"]] for f in flagged[:50]])
            if flagged
            else "_none_"
        ),
        "table": MetadataValue.path(lake.uri(lake_keys.raw_plant_key(days[0]))),
        "quarantine": MetadataValue.path(lake.uri(lake_keys.plant_quarantine_prefix(days[0]))),
    }
    if len(results) == 1:
        metadata["dropout_share"] = MetadataValue.json(results[0].dropout)
    if empty_days:
        metadata["days_without_files"] = MetadataValue.text(", ".join(empty_days))
        context.log.warning(f"no historian files landed for {', '.join(empty_days)}: empty tables written")
    yield MaterializeResult(metadata=metadata)

    clean = read_raw_samples(lake, days)
    suite = validate_plant_samples(clean)
    yield AssetCheckResult(
        check_name="plant_samples_valid",
        passed=suite.success,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "summary": MetadataValue.text(suite.summary()),
            "expectations": suite.evaluated,
            "rows": clean.height,
        },
    )
    share = rejected / max(samples + rejected, 1)
    yield AssetCheckResult(
        check_name="plant_sensor_quarantine",
        passed=not file_errors and share <= 0.05,
        severity=AssetCheckSeverity.WARN,
        metadata={"refused_files": len(file_errors), "rejected_rows": rejected, "rejected_share": round(share, 4)},
    )


# -- landing → raw + quarantine (zone I/O) ---------------------------------------------------------
@dataclass
class PlantRawDay:
    day: str
    files: list[str]  # historian files read (lake keys)
    samples: int  # clean rows written
    parts: int
    rejected: int  # rows moved to quarantine
    reject_reasons: dict[str, int]  # reason pattern -> rows
    file_errors: dict[str, str]  # lake key -> why the whole file was refused
    flagged: list[dict]  # part_id, signal, dropout, reason
    plan_parts: int | None  # parts in the day's production plan, None without a plan
    dropout: dict[str, float] = field(default_factory=dict)  # share of missing values per signal


def ingest_plant_day(lake: Lake, day: str, now: dt.datetime | None = None) -> PlantRawDay:
    """One day from landing/plant/<day> to raw samples + quarantine (rejected rows, refused files, flagged parts).

    Every table is written, empty or not, so re-running a day replaces all of its outputs.
    """
    import polars as pl

    from alumi_pipelines.lib.plant.samples import SIGNALS, normalise_files

    prefix = lake_keys.plant_landing_prefix(day)
    now = now or dt.datetime.now(dt.UTC)
    historian: dict[str, bytes] = {}
    file_errors: dict[str, str] = {}
    plan: list[str] | None = None
    for f in lake.list_files(prefix):
        name = f.key[len(prefix) + 1 :]
        if name == lake_keys.OUTCOMES_FILE:
            continue  # read by defect_risk_dataset: outcomes may land days after the samples
        if name == lake_keys.PLAN_FILE:
            try:
                plan = _read_plan(lake.read_bytes(f.key), f.key)
            except ValueError as exc:
                file_errors[f.key] = f"{exc}; part ids of this day are not checked against a plan"
            continue
        if "/" in name or not name.lower().endswith(".csv"):
            file_errors[f.key] = f"{f.key}: not a historian CSV export (expected <name>.csv directly in {prefix}/)"
            continue
        historian[f.key] = lake.read_bytes(f.key)
    result = normalise_files(historian, known_parts=plan, now=now)
    file_errors.update(result.file_errors)
    clean, rejects = result.clean, result.rejects.rechunk()

    lake.write_table(lake_keys.raw_plant_key(day), clean)
    lake.write_table(lake_keys.plant_rejects_key(day), rejects)
    lake.delete(lake_keys.plant_quarantine_files(day))
    for key in sorted(file_errors):
        if lake.exists(key) and key.startswith(prefix + "/"):
            lake.write_bytes(lake_keys.plant_quarantine_file_key(day, key[len(prefix) + 1 :]), lake.read_bytes(key))
    errors = pl.DataFrame(
        {"file": sorted(file_errors), "reason": [file_errors[k] for k in sorted(file_errors)]},
        schema={"file": pl.Utf8, "reason": pl.Utf8},
    )
    lake.write_table(lake_keys.plant_file_errors_key(day), errors)
    flags = flag_missing_signals(clean)
    lake.write_table(lake_keys.plant_flags_key(day), flags)

    reasons: dict[str, int] = {}
    for reason in rejects["reason"].to_list():
        key = reason_pattern(reason or "unknown")
        reasons[key] = reasons.get(key, 0) + 1
    dropout = {s: round(float(clean[s].null_count() / clean.height), 4) for s in SIGNALS} if clean.height else {}
    return PlantRawDay(
        day=day,
        files=sorted(historian),
        samples=clean.height,
        parts=clean["part_id"].n_unique() if clean.height else 0,
        rejected=rejects.height,
        reject_reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        file_errors=file_errors,
        flagged=flags.to_dicts(),
        plan_parts=None if plan is None else len(set(plan)),
        dropout=dropout,
    )


def read_raw_samples(lake: Lake, days: list[str]):
    """Clean samples of the given days, concatenated."""
    import polars as pl

    from alumi_pipelines.lib.plant.samples import empty_clean

    frames = [lake.read_table(lake_keys.raw_plant_key(d)) for d in days]
    frames = [f for f in frames if f.height]
    return pl.concat(frames) if frames else empty_clean()


def reason_pattern(reason: str) -> str:
    """A reject reason with its values blanked, to count reasons by kind."""
    text = re.sub(r"'[^']*'", "'…'", reason)
    text = re.sub(r"\d{4}-\d{2}-\d{2}[T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?", "<time>", text)
    return re.sub(r"-?\d+(\.\d+)?(e[+-]?\d+)?", "#", text)


def _read_plan(data: bytes, key: str) -> list[str]:
    import polars as pl

    try:
        plan = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except Exception as exc:  # polars raises several error types for malformed CSV
        raise ValueError(f"{key}: not a readable CSV file ({type(exc).__name__}: {exc})") from exc
    columns = {c.strip().lower(): c for c in plan.columns}
    if "part_id" not in columns:
        raise ValueError(f"{key}: missing column 'part_id' (required in a production plan)")
    return [p.strip() for p in plan[columns["part_id"]].drop_nulls().to_list() if p.strip()]


def flag_missing_signals(clean, threshold: float = FLAG_DROPOUT_SHARE):
    """Parts (kept) whose signal misses at least ``threshold`` of its samples: part_id, signal, dropout, reason."""
    import polars as pl

    from alumi_pipelines.lib.plant.samples import SIGNALS

    schema = {"part_id": pl.Utf8, "signal": pl.Utf8, "dropout": pl.Float64, "reason": pl.Utf8}
    if clean.height == 0:
        return pl.DataFrame(schema=schema)
    shares = clean.group_by("part_id").agg((pl.col(s).null_count() / pl.len()).alias(s) for s in SIGNALS)
    long = (
        shares.unpivot(index="part_id", variable_name="signal", value_name="dropout")
        .filter(pl.col("dropout") >= threshold)
        .sort("part_id", "signal")
        .rechunk()
    )  # rechunk: pl.format panics on empty chunks (polars 2.1)
    reason = (
        pl.when(pl.col("dropout") >= 1.0)
        .then(pl.format("{} missing for the whole part (sensor down)", pl.col("signal")))
        .otherwise(
            pl.format(
                "{} missing in {}% of the part's samples (NaN burst)",
                pl.col("signal"),
                (pl.col("dropout") * 100).round(0).cast(pl.Int64),
            )
        )
    )
    return long.with_columns(reason.alias("reason")).select(list(schema))


# -- which days: landing folders, partition ranges -------------------------------------------------
def landing_days(lake: Lake) -> list[str]:
    """Days with a landing folder, oldest first."""
    return [d for d in lake.list_dirs(lake_keys.PLANT_LANDING) if lake_keys.DAY_PATTERN.match(d)]


def partition_range_tags(days: list[str]) -> dict[str, str]:
    """``dagster job execute --tags`` covering the given days as one partition range."""
    if not days:
        raise ValueError(
            f"no plant days: nothing under {lake_keys.PLANT_LANDING}/ (write some with `alumi plant-demo-data`)"
        )
    return {"dagster/asset_partition_range_start": min(days), "dagster/asset_partition_range_end": max(days)}


def plant_days_tags(lake: Lake) -> dict[str, str]:
    """Partition-range tags covering every day under landing/plant/ (``alumi plant-days``)."""
    return partition_range_tags(landing_days(lake))


# -- simulated plant data into landing (``alumi plant-demo-data``) ---------------------------------
def csv_bytes(frame) -> bytes:
    """A polars frame as CSV, the way the historian and the QA station write it."""
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


def write_plant_demo(
    lake: Lake,
    start: dt.date,
    days: int,
    parts_per_day: int,
    seed: int,
    *,
    faults: Iterable[str] = (),
    fault_file: str | None = None,
    today: dt.date | None = None,
) -> list[str]:
    """Simulate ``days`` production days from ``start`` and land them; returns the lake keys written.

    Per day: one historian CSV per line, the production plan and the QA outcomes. ``faults`` (names in
    lib.plant.sim.FAULTS) go into ``fault_file`` (``<day>/historian_<line>.csv``, default the first file).
    Every simulated day must be over already (UTC): samples stamped in the future are quarantined.
    """
    import polars as pl

    from alumi_pipelines.lib.plant.sim import simulate_days

    today = today or dt.datetime.now(dt.UTC).date()
    if days < 1:
        raise ValueError(f"plant demo: days={days}: must be at least 1")
    last = start + dt.timedelta(days=days - 1)
    if last >= today:
        raise ValueError(
            f"plant demo: the last simulated day {last} is not over yet (today is {today} UTC); "
            f"start on {today - dt.timedelta(days=days)} or earlier"
        )
    plant = simulate_days(start, days, parts_per_day, seed)
    keys = []
    for name, data in plant.historian_files(faults, fault_file).items():
        day, _, file_name = name.partition("/")
        keys.append(lake.write_bytes(lake_keys.plant_landing_key(day, file_name), data))
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        plan = plant.parts.filter(pl.col("day") == day).select(
            "part_id",
            "line",
            "alloy",
            pl.col("start").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            pl.col("end").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "n_samples",
        )
        outcomes = plant.outcomes.filter(pl.col("day") == day)
        keys.append(
            lake.write_bytes(lake_keys.plant_landing_key(day.isoformat(), lake_keys.PLAN_FILE), csv_bytes(plan))
        )
        keys.append(
            lake.write_bytes(lake_keys.plant_landing_key(day.isoformat(), lake_keys.OUTCOMES_FILE), csv_bytes(outcomes))
        )
    return sorted(keys)
