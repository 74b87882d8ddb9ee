"""Where the process-sensor branch keeps what in the lake, and its zone-to-zone moves.

Layout (one folder per production day, UTC, ``YYYY-MM-DD``)::

    landing/process/<day>/historian_<line>.csv     historian exports (any other *.csv is read as one too)
    landing/process/<day>/production_plan.csv      optional: the day's planned part ids (unknown ids are rejected)
    landing/process/<day>/outcomes.csv             QA station inspection outcomes (part_id, n_<defect type>...)
    raw/process/<day>.parquet                      clean samples, canonical units, UTC
    quarantine/process/<day>/rejects.parquet       rejected rows with their reason
    quarantine/process/<day>/file_errors.parquet   whole files refused, with the reason; bytes under files/
    quarantine/process/<day>/flagged_parts.parquet kept parts with a signal mostly missing (NaN bursts)
    quarantine/process/outcomes/...                outcome files that could not be read
    processed/process_features/<day>.parquet       windowed statistics per part
    gold/process/dataset.parquet                   features joined with outcomes, with a ``split`` column
    gold/process/split.json, unmatched.parquet     the day split; parts the join could not match, with reasons
    models/risk/versions/<version>/risk_model.json every registered risk model (also in MLflow)
    models/risk/evaluations/<version>.json         evaluation record (+ .gate.json verdict, plots)
    models/risk/champion/risk_model.json           the champion, for the edge release (role risk_model)
    reports/process_drift/<report_id>.html|json    evidently drift reports; latest.json for the drift sensor

Assets call these functions; the logic itself lives in lib/process_features and lib/risk_model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Mapping

from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import CHAMPION, MlflowRegistry, TrackedRun

PROCESS_LANDING = "landing/process"
DAY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
OUTCOMES_FILE = "outcomes.csv"
PLAN_FILE = "production_plan.csv"
FLAG_DROPOUT_SHARE = 0.5  # a part whose signal misses at least this share of samples is flagged

RISK_MODEL_NAME = "alumi-defect-risk"
RISK_EXPERIMENT = "alumi-defect-risk"
RISK_ARTIFACT_PATH = "risk_model"  # artifact folder of a run holding risk_model.json; a version's source
RISK_MODEL_FILE = "risk_model.json"

RISK_DATASET_KEY = "gold/process/dataset.parquet"
RISK_SPLIT_KEY = "gold/process/split.json"
RISK_UNMATCHED_KEY = "gold/process/unmatched.parquet"
OUTCOME_ERRORS_KEY = "quarantine/process/outcomes/file_errors.parquet"
RISK_CHAMPION_KEY = "models/risk/champion/risk_model.json"
RISK_CHAMPION_POINTER = "models/risk/champion/champion.json"
PROCESS_DRIFT_LATEST = "reports/process_drift/latest.json"


# -- keys ------------------------------------------------------------------------------------------
def check_day(day: str) -> str:
    """The day key, or ValueError naming the rule (YYYY-MM-DD, a real date)."""
    if not isinstance(day, str) or not DAY_PATTERN.match(day):
        raise ValueError(f"process day {day!r}: must be YYYY-MM-DD")
    dt.date.fromisoformat(day)
    return day


def process_landing_prefix(day: str) -> str:
    return f"{PROCESS_LANDING}/{check_day(day)}"


def process_landing_key(day: str, name: str) -> str:
    return f"{process_landing_prefix(day)}/{name}"


def historian_landing_name(line: str) -> str:
    return f"historian_{line}.csv"


def raw_process_key(day: str) -> str:
    return f"raw/process/{check_day(day)}.parquet"


def process_quarantine_prefix(day: str) -> str:
    return f"quarantine/process/{check_day(day)}"


def process_rejects_key(day: str) -> str:
    return f"{process_quarantine_prefix(day)}/rejects.parquet"


def process_file_errors_key(day: str) -> str:
    return f"{process_quarantine_prefix(day)}/file_errors.parquet"


def process_flags_key(day: str) -> str:
    return f"{process_quarantine_prefix(day)}/flagged_parts.parquet"


def process_quarantine_file_key(day: str, name: str) -> str:
    return f"{process_quarantine_prefix(day)}/files/{name}"


def process_features_key(day: str) -> str:
    return f"processed/process_features/{check_day(day)}.parquet"


def risk_version_key(version: str) -> str:
    return f"models/risk/versions/{version}/{RISK_MODEL_FILE}"


def risk_evaluation_key(version: str) -> str:
    return f"models/risk/evaluations/{version}.json"


def risk_gate_key(version: str) -> str:
    return f"models/risk/evaluations/{version}.gate.json"


def risk_plot_key(version: str, name: str) -> str:
    return f"models/risk/evaluations/{version}/{name}.png"


def process_drift_report_key(report_id: str, ext: str) -> str:
    return f"reports/process_drift/{report_id}.{ext}"


def landing_days(lake: Lake) -> list[str]:
    """Days with a landing folder, oldest first."""
    return [d for d in lake.list_dirs(PROCESS_LANDING) if DAY_PATTERN.match(d)]


def partition_range_tags(days: list[str]) -> dict[str, str]:
    """``dagster job execute --tags`` covering the given days as one partition range."""
    if not days:
        raise ValueError(f"no process days: nothing under {PROCESS_LANDING}/ (write some with process-demo-data)")
    return {"dagster/asset_partition_range_start": min(days), "dagster/asset_partition_range_end": max(days)}


# -- raw -------------------------------------------------------------------------------------------
@dataclass
class ProcessRawDay:
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

    from alumi_pipelines.lib.process_features import SIGNALS

    schema = {"part_id": pl.Utf8, "signal": pl.Utf8, "dropout": pl.Float64, "reason": pl.Utf8}
    if clean.height == 0:
        return pl.DataFrame(schema=schema)
    shares = clean.group_by("part_id").agg((pl.col(s).null_count() / pl.len()).alias(s) for s in SIGNALS)
    long = shares.unpivot(index="part_id", variable_name="signal", value_name="dropout").filter(
        pl.col("dropout") >= threshold
    ).sort("part_id", "signal").rechunk()  # rechunk: pl.format panics on empty chunks (polars 2.1)
    reason = pl.when(pl.col("dropout") >= 1.0).then(
        pl.format("{} missing for the whole part (sensor down)", pl.col("signal"))
    ).otherwise(pl.format("{} missing in {}% of the part's samples (NaN burst)",
                          pl.col("signal"), (pl.col("dropout") * 100).round(0).cast(pl.Int64)))
    return long.with_columns(reason.alias("reason")).select(list(schema))


def ingest_process_day(lake: Lake, day: str, now: dt.datetime | None = None) -> ProcessRawDay:
    """landing/process/<day> → raw samples + quarantine (rejected rows, refused files, flagged parts).

    Every table is written, empty or not, so re-running a day replaces all of its outputs.
    """
    import polars as pl

    from alumi_pipelines.lib import process_features as pf

    prefix = process_landing_prefix(day)
    now = now or dt.datetime.now(dt.timezone.utc)
    historian: dict[str, bytes] = {}
    file_errors: dict[str, str] = {}
    plan: list[str] | None = None
    for f in lake.list_files(prefix):
        name = f.key[len(prefix) + 1 :]
        if name == OUTCOMES_FILE:
            continue  # read by defect_risk_dataset: outcomes may land days after the samples
        if name == PLAN_FILE:
            try:
                plan = _read_plan(lake.read_bytes(f.key), f.key)
            except ValueError as exc:
                file_errors[f.key] = f"{exc}; part ids of this day are not checked against a plan"
            continue
        if "/" in name or not name.lower().endswith(".csv"):
            file_errors[f.key] = f"{f.key}: not a historian CSV export (expected <name>.csv directly in {prefix}/)"
            continue
        historian[f.key] = lake.read_bytes(f.key)
    result = pf.normalise_files(historian, known_parts=plan, now=now)
    file_errors.update(result.file_errors)
    clean, rejects = result.clean, result.rejects.rechunk()

    lake.write_table(raw_process_key(day), clean)
    lake.write_table(process_rejects_key(day), rejects)
    lake.delete(f"{process_quarantine_prefix(day)}/files")
    for key in sorted(file_errors):
        if lake.exists(key) and key.startswith(prefix + "/"):
            lake.write_bytes(process_quarantine_file_key(day, key[len(prefix) + 1 :]), lake.read_bytes(key))
    errors = pl.DataFrame({"file": sorted(file_errors), "reason": [file_errors[k] for k in sorted(file_errors)]},
                          schema={"file": pl.Utf8, "reason": pl.Utf8})
    lake.write_table(process_file_errors_key(day), errors)
    flags = flag_missing_signals(clean)
    lake.write_table(process_flags_key(day), flags)

    reasons: dict[str, int] = {}
    for reason in rejects["reason"].to_list():
        key = reason_pattern(reason or "unknown")
        reasons[key] = reasons.get(key, 0) + 1
    dropout = {s: round(float(clean[s].null_count() / clean.height), 4) for s in pf.SIGNALS} if clean.height else {}
    return ProcessRawDay(
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

    from alumi_pipelines.lib.process_features import empty_clean

    frames = [lake.read_table(raw_process_key(d)) for d in days]
    frames = [f for f in frames if f.height]
    return pl.concat(frames) if frames else empty_clean()


# -- processed -------------------------------------------------------------------------------------
def build_day_features(lake: Lake, day: str):
    """raw/process/<day> → processed/process_features/<day> (one row per part); returns the table."""
    from alumi_pipelines.lib.process_features import part_features

    key = raw_process_key(day)
    if not lake.exists(key):
        raise FileNotFoundError(f"{key}: no raw samples for {day}; materialise process_sensor_raw for it first")
    features = part_features(lake.read_table(key))
    lake.write_table(process_features_key(day), features)
    return features


def feature_days(lake: Lake) -> list[str]:
    """Days with a features table, oldest first."""
    return [PurePosixPath(f.key).stem for f in lake.list_files("processed/process_features")
            if f.key.endswith(".parquet") and DAY_PATTERN.match(PurePosixPath(f.key).stem)]


def read_process_features(lake: Lake, days: list[str] | None = None):
    """Features of the given days (default: every day in the lake), in day and part order."""
    import polars as pl

    days = feature_days(lake) if days is None else days
    frames = [lake.read_table(process_features_key(d)) for d in days]
    frames = [f for f in frames if f.height]
    if not frames:
        from alumi_pipelines.lib.process_features import empty_clean, part_features

        return part_features(empty_clean())
    return pl.concat(frames, how="vertical_relaxed").sort("day", "part_id")


# -- gold: outcomes and the dataset ----------------------------------------------------------------
def read_qa_outcomes(lake: Lake) -> tuple[Any, dict[str, str]]:
    """(outcomes of every landed outcomes.csv, file key -> why it was refused); refused files are quarantined."""
    import polars as pl

    from alumi_pipelines.lib.process_features import DEFECT_TYPES, count_column

    counts = [count_column(t) for t in DEFECT_TYPES]
    schema = {"part_id": pl.Utf8, **{c: pl.Int64 for c in counts}, "outcome_source": pl.Utf8}
    frames, errors = [], {}
    for day in landing_days(lake):
        key = process_landing_key(day, OUTCOMES_FILE)
        if not lake.exists(key):
            continue
        data = lake.read_bytes(key)
        try:
            table = pl.read_csv(io.BytesIO(data), infer_schema=False)
        except Exception as exc:  # polars raises several error types for malformed CSV
            errors[key] = f"{key}: not a readable CSV file ({type(exc).__name__}: {exc})"
            continue
        columns = {c.strip().lower(): c for c in table.columns}
        missing = [c for c in ("part_id", *counts) if c not in columns]
        if missing:
            errors[key] = f"{key}: missing column(s) {', '.join(map(repr, missing))} (required in inspection outcomes)"
            continue
        frames.append(table.select(
            pl.col(columns["part_id"]).str.strip_chars().alias("part_id"),
            # a count that is not a whole number becomes null: the join reports it per part
            *[pl.col(columns[c]).str.strip_chars().cast(pl.Int64, strict=False).alias(c) for c in counts],
            pl.lit(key).alias("outcome_source"),
        ))
    lake.delete("quarantine/process/outcomes/files")
    for key in errors:
        lake.write_bytes(f"quarantine/process/outcomes/files/{key[len(PROCESS_LANDING) + 1:]}", lake.read_bytes(key))
    lake.write_table(OUTCOME_ERRORS_KEY, pl.DataFrame({"file": list(errors), "reason": list(errors.values())},
                                                      schema={"file": pl.Utf8, "reason": pl.Utf8}))
    outcomes = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    return outcomes, errors


def read_vision_outcomes(lake: Lake) -> tuple[Any, Any, str]:
    """(outcomes or None, rejected detections or None, note) from processed labels of images that carry a part_id."""
    import polars as pl

    from alumi_pipelines.lib.process_features import outcomes_from_detections
    from alumi_pipelines.resources.lake_layout import read_processed

    images, labels = read_processed(lake)
    if "part_id" in images.columns:
        inspected = images.select("image_id", pl.col("part_id").cast(pl.Utf8)).filter(
            pl.col("part_id").is_not_null() & (pl.col("part_id") != "")
        ).unique("image_id")
        detections = labels.join(inspected, on="image_id", how="inner") if labels.height else None
        parts = inspected["part_id"].unique().to_list()
    elif "part_id" in labels.columns:
        detections, parts = labels, []
    else:
        return None, None, "processed images carry no part_id: no vision outcomes joined"
    if not parts and (detections is None or detections.height == 0):
        return None, None, "no processed image with a part_id yet"
    if detections is None:
        detections = pl.DataFrame(schema={"part_id": pl.Utf8, "class_name": pl.Utf8})
    outcomes, rejects = outcomes_from_detections(detections, parts)
    note = f"{outcomes.height} parts inspected by the vision branch, {rejects.height} detections not usable"
    return outcomes.with_columns(pl.lit("vision").alias("outcome_source")), rejects, note


def combine_outcomes(qa, vision):
    """QA outcomes, plus vision outcomes for parts the QA station did not report (QA is the record of truth)."""
    import polars as pl

    if vision is None or vision.height == 0:
        return qa
    extra = vision.filter(~pl.col("part_id").is_in(qa["part_id"].implode()))
    return pl.concat([qa, extra.select(qa.columns)], how="vertical_relaxed")


@dataclass
class RiskDataset:
    dataset: Any  # polars frame with a split column
    split: Any  # DaySplit
    unmatched: Any  # part_id, side, reason
    outcome_errors: dict[str, str]
    vision_note: str
    dataset_hash: str
    counts: dict[str, int]  # parts per split
    positives: dict[str, dict[str, int]]  # split -> defect type -> parts with that defect


def split_repeated_parts(features):
    """(features without parts seen on several days, unmatched rows for those parts with the reason)."""
    import polars as pl

    repeated = features.filter(pl.col("part_id").is_duplicated())
    if repeated.height == 0:
        return features, pl.DataFrame(schema={"part_id": pl.Utf8, "side": pl.Utf8, "reason": pl.Utf8})
    days = repeated.group_by("part_id").agg(pl.col("day").cast(pl.Utf8).sort().str.join(", ").alias("days"))
    flagged = days.select(
        "part_id", pl.lit("features").alias("side"),
        (pl.lit("part has sensor features on several days (") + pl.col("days")
         + pl.lit("): its samples span partitions, excluded")).alias("reason"),
    )
    return features.filter(~pl.col("part_id").is_duplicated()), flagged


def build_risk_dataset(lake: Lake, *, val_days: int = 1, test_days: int = 1) -> RiskDataset:
    """Every day's features joined with inspection outcomes, split by day; writes dataset, split and unmatched."""
    import polars as pl

    from alumi_pipelines.lib import process_features as pf

    features = read_process_features(lake)
    if features.height == 0:
        raise ValueError("defect_risk_dataset: no process features in the lake; materialise process_sensor_features")
    features, repeated = split_repeated_parts(features)
    qa, outcome_errors = read_qa_outcomes(lake)
    vision, _, vision_note = read_vision_outcomes(lake)
    outcomes = combine_outcomes(qa, vision)
    dataset, unmatched = pf.join_outcomes(features, outcomes)
    unmatched = pl.concat([repeated, unmatched]).sort("side", "part_id")
    split = pf.time_split(dataset, val_days=val_days, test_days=test_days)
    dataset = split.assign(dataset)
    buffer = io.BytesIO()
    dataset.write_parquet(buffer, compression="zstd", statistics=True)
    data = buffer.getvalue()
    lake.write_bytes(RISK_DATASET_KEY, data)
    lake.write_json(RISK_SPLIT_KEY, split.to_dict())
    lake.write_table(RISK_UNMATCHED_KEY, unmatched)
    counts = {name: split.rows(dataset, name).height for name in ("train", "val", "test")}
    positives = {
        name: {t: int(split.rows(dataset, name)[pf.target_column(t)].sum()) for t in pf.DEFECT_TYPES}
        for name in ("train", "val", "test")
    }
    return RiskDataset(dataset, split, unmatched, outcome_errors, vision_note,
                       hashlib.sha256(data).hexdigest()[:16], counts, positives)


def read_risk_dataset(lake: Lake):
    """(dataset, DaySplit) written by build_risk_dataset."""
    from alumi_pipelines.lib.process_features import DaySplit

    if not lake.exists(RISK_DATASET_KEY):
        raise FileNotFoundError(f"{RISK_DATASET_KEY}: no risk dataset yet; materialise defect_risk_dataset first")
    return lake.read_table(RISK_DATASET_KEY), DaySplit.from_dict(lake.read_json(RISK_SPLIT_KEY))


def dataset_hash(lake: Lake) -> str:
    return hashlib.sha256(lake.read_bytes(RISK_DATASET_KEY)).hexdigest()[:16]


# -- models: MLflow registry and the champion file -------------------------------------------------
def risk_registry(mlflow: MlflowRegistry) -> MlflowRegistry:
    """The detector's MLflow resource, pointed at the risk model's experiment and registered model."""
    return MlflowRegistry(tracking_uri=mlflow.tracking_uri, artifact_location=mlflow.artifact_location,
                          experiment_name=RISK_EXPERIMENT, model_name=RISK_MODEL_NAME)


def register_risk_model(registry: MlflowRegistry, run: TrackedRun, *, tags: Mapping[str, Any],
                        description: str = "") -> str:
    """Register the run's ``risk_model/`` artifact folder as a new version of the risk model; returns its number."""
    from mlflow.exceptions import MlflowException

    client = registry.client()
    try:
        client.get_registered_model(registry.model_name)
    except MlflowException:
        client.create_registered_model(
            registry.model_name,
            description="Defect risk per part from process sensors: one calibrated XGBoost booster per defect type",
        )
    mv = client.create_model_version(registry.model_name, source=f"{run.artifact_uri}/{RISK_ARTIFACT_PATH}",
                                     run_id=run.run_id, tags={str(k): str(v) for k, v in tags.items()},
                                     description=description or None)
    return str(mv.version)


def risk_model_bytes(lake: Lake, registry: MlflowRegistry, version: str) -> bytes:
    """The JSON of a registered version: the lake's copy, else downloaded from MLflow."""
    key = risk_version_key(version)
    if lake.exists(key):
        return lake.read_bytes(key)
    import tempfile
    from pathlib import Path

    from alumi_pipelines.resources.mlflow_registry import _mlflow

    info = registry.version(version)
    with tempfile.TemporaryDirectory(prefix="alumi-risk-") as tmp:
        local = _mlflow().artifacts.download_artifacts(artifact_uri=f"{info.source}/{RISK_MODEL_FILE}", dst_path=tmp,
                                                       tracking_uri=registry.tracking_uri)
        return Path(local).read_bytes()


def publish_risk_champion(lake: Lake, registry: MlflowRegistry) -> dict:
    """Write the champion's JSON to models/risk/champion/ for the edge release; returns the pointer.

    The file is the registered JSON with ``info.registry`` (model name and version) added, so the edge
    server can report which version answered. Run again after ``alumi rollback`` of the risk model.
    """
    version = registry.alias_version(CHAMPION)
    if version is None:
        raise ValueError(f"model {registry.model_name!r} has no {CHAMPION!r} alias: nothing to publish")
    document = json.loads(risk_model_bytes(lake, registry, version))
    document.setdefault("info", {})["registry"] = {"model_name": registry.model_name, "version": version}
    data = json.dumps(document, separators=(",", ":")).encode("utf-8")
    lake.write_bytes(RISK_CHAMPION_KEY, data)
    pointer = {
        "model_name": registry.model_name,
        "version": version,
        "key": RISK_CHAMPION_KEY,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "model_uri": f"models:/{registry.model_name}@{CHAMPION}",
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    lake.write_json(RISK_CHAMPION_POINTER, pointer)
    return pointer


def champion_days(lake: Lake) -> list[str]:
    """Train and validation days of the published champion (its reference data), [] without one."""
    if not lake.exists(RISK_CHAMPION_KEY):
        return []
    split = json.loads(lake.read_bytes(RISK_CHAMPION_KEY)).get("info", {}).get("split") or {}
    return sorted(set(split.get("train_days", [])) | set(split.get("val_days", [])))


# -- reports: drift --------------------------------------------------------------------------------
def write_drift_report(lake: Lake, result, *, report_id: str, extra: Mapping[str, Any]) -> dict:
    """Write the evidently report (HTML + JSON) and reports/process_drift/latest.json; returns latest."""
    html_key = lake.write_bytes(process_drift_report_key(report_id, "html"), result.html)
    json_key = lake.write_bytes(process_drift_report_key(report_id, "json"), result.json)
    latest = {
        "report_id": report_id,
        "passed": bool(result.passed),
        "drift_share": float(result.drift_share),
        "threshold_share": float(result.threshold_share),
        "drifted_columns": list(result.drifted_columns),
        "html": html_key,
        "json": json_key,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        **extra,
    }
    lake.write_json(PROCESS_DRIFT_LATEST, latest)
    return latest
