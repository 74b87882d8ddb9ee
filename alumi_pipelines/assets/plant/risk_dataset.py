"""``defect_risk_dataset`` (group ``plant_risk``): every day's features joined with inspection outcomes, split by day.

:func:`build_risk_dataset` does the work (processed features + landed outcomes → gold); the model stages read
the result with :func:`read_risk_dataset` and name it by :func:`dataset_hash`.
"""

import hashlib
import io
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from alumi_pipelines.assets.metadata import md_table
from alumi_pipelines.assets.plant.sensor_features import plant_sensor_features, read_plant_features
from alumi_pipelines.assets.plant.sensor_raw import landing_days
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake

GROUP = "plant_risk"
SPLITS = ("train", "val", "test")


class RiskDatasetConfig(Config):
    val_days: int = Field(
        default=1, description="days before the hold-out days that validate (early stopping, calibration)"
    )
    test_days: int = Field(default=1, description="newest days held out for evaluation")


@asset(
    deps=[plant_sensor_features],
    group_name=GROUP,
    owners=["team:data-science"],
    kinds={"polars", "parquet"},
    description="Features of every day joined per part with inspection outcomes: the QA station's outcomes.csv "
    "of each landing day, and where processed images carry a part_id, defect counts from the vision branch's "
    "labels (for parts the QA station did not report). Binary target per defect type; split by day (the newest "
    "days held out). Parts the join cannot match (no outcome, unknown part id, bad counts) are listed with the "
    "reason in gold/plant/unmatched.parquet, never silently dropped.",
    check_specs=[
        AssetCheckSpec(
            "risk_dataset_splits",
            asset="defect_risk_dataset",
            blocking=True,
            description="Train, validation and test days each hold parts, and every defect type has positive "
            "training parts. Failing means a model trained now could not learn or be evaluated.",
        ),
        AssetCheckSpec(
            "risk_dataset_unmatched",
            asset="defect_risk_dataset",
            blocking=False,
            description="Warns about outcomes for unknown part ids, unreadable outcome files or bad counts.",
        ),
    ],
)
def defect_risk_dataset(context: AssetExecutionContext, config: RiskDatasetConfig, lake: Lake):
    import polars as pl

    from alumi_pipelines.lib.plant.dataset import DEFECT_TYPES

    try:
        built = build_risk_dataset(lake, val_days=config.val_days, test_days=config.test_days)
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    unmatched = built.unmatched
    by_reason = unmatched.group_by("side", "reason").len().sort("side", "len", descending=[False, True])
    unknown = unmatched.filter(pl.col("reason").str.contains("no sensor features"))["part_id"].to_list()
    for key, why in built.outcome_errors.items():
        context.log.warning(f"refused {key}: {why}")
    if unknown:
        context.log.warning(f"{len(unknown)} outcome part ids have no sensor features, e.g. {unknown[:5]}")
    split = built.split
    positives = [[t] + [built.positives[s][t] for s in SPLITS] for t in DEFECT_TYPES]
    yield MaterializeResult(
        metadata={
            "parts": built.dataset.height,
            "days": len(split.train_days) + len(split.val_days) + len(split.test_days),
            **{f"{s}_parts": n for s, n in built.counts.items()},
            "split_days": MetadataValue.json(split.to_dict()),
            "positives": MetadataValue.md(md_table(["defect type", "train", "val", "test"], positives)),
            "unmatched_parts": unmatched.height,
            "unknown_part_ids": len(unknown),
            "unknown_part_id_examples": MetadataValue.text(", ".join(unknown[:10]) or "none"),
            "unmatched_reasons": MetadataValue.md(
                md_table(["side", "reason", "parts"], [list(r) for r in by_reason.iter_rows()])
                if unmatched.height
                else "_none_"
            ),
            "outcome_file_errors": MetadataValue.md(
                md_table(["file", "reason"], [[k, v] for k, v in built.outcome_errors.items()])
                if built.outcome_errors
                else "_none_"
            ),
            "vision_outcomes": MetadataValue.text(built.vision_note),
            "dataset_hash": built.dataset_hash,
            "table": MetadataValue.path(lake.uri(lake_keys.RISK_DATASET_KEY)),
            "unmatched": MetadataValue.path(lake.uri(lake_keys.RISK_UNMATCHED_KEY)),
        }
    )
    empty = [s for s, n in built.counts.items() if n == 0]
    untrainable = [t for t in DEFECT_TYPES if built.positives["train"][t] == 0]
    yield AssetCheckResult(
        check_name="risk_dataset_splits",
        passed=not empty and not untrainable,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "empty_splits": MetadataValue.text(", ".join(empty) or "none"),
            "types_without_train_positives": MetadataValue.text(", ".join(untrainable) or "none"),
        },
    )
    bad_counts = unmatched.filter(pl.col("side") == "outcomes").height - len(unknown)
    yield AssetCheckResult(
        check_name="risk_dataset_unmatched",
        passed=not unknown and not built.outcome_errors and bad_counts == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "unknown_part_ids": len(unknown),
            "outcome_file_errors": len(built.outcome_errors),
            "bad_outcome_rows": bad_counts,
        },
    )


# -- processed + landing outcomes → gold (zone I/O) ------------------------------------------------
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


def build_risk_dataset(lake: Lake, *, val_days: int = 1, test_days: int = 1) -> RiskDataset:
    """Every day's features joined with inspection outcomes, split by day; writes dataset, split and unmatched."""
    import polars as pl

    from alumi_pipelines.lib.plant.dataset import DEFECT_TYPES, join_outcomes, target_column, time_split

    features = read_plant_features(lake)
    if features.height == 0:
        raise ValueError("defect_risk_dataset: no plant features in the lake; materialise plant_sensor_features")
    features, repeated = split_repeated_parts(features)
    qa, outcome_errors = read_qa_outcomes(lake)
    vision, _, vision_note = read_vision_outcomes(lake)
    outcomes = combine_outcomes(qa, vision)
    dataset, unmatched = join_outcomes(features, outcomes)
    unmatched = pl.concat([repeated, unmatched]).sort("side", "part_id")
    split = time_split(dataset, val_days=val_days, test_days=test_days)
    dataset = split.assign(dataset)
    buffer = io.BytesIO()
    dataset.write_parquet(buffer, compression="zstd", statistics=True)
    data = buffer.getvalue()
    lake.write_bytes(lake_keys.RISK_DATASET_KEY, data)
    lake.write_json(lake_keys.RISK_SPLIT_KEY, split.to_dict())
    lake.write_table(lake_keys.RISK_UNMATCHED_KEY, unmatched)
    counts = {name: split.rows(dataset, name).height for name in SPLITS}
    positives = {
        name: {t: int(split.rows(dataset, name)[target_column(t)].sum()) for t in DEFECT_TYPES} for name in SPLITS
    }
    return RiskDataset(
        dataset, split, unmatched, outcome_errors, vision_note, hashlib.sha256(data).hexdigest()[:16], counts, positives
    )


def read_risk_dataset(lake: Lake):
    """(dataset, DaySplit) written by build_risk_dataset."""
    from alumi_pipelines.lib.plant.dataset import DaySplit

    if not lake.exists(lake_keys.RISK_DATASET_KEY):
        raise FileNotFoundError(
            f"{lake_keys.RISK_DATASET_KEY}: no risk dataset yet; materialise defect_risk_dataset first"
        )
    return lake.read_table(lake_keys.RISK_DATASET_KEY), DaySplit.from_dict(lake.read_json(lake_keys.RISK_SPLIT_KEY))


def dataset_hash(lake: Lake) -> str:
    """Short content hash of the risk dataset in the lake (names what a model was trained on)."""
    return hashlib.sha256(lake.read_bytes(lake_keys.RISK_DATASET_KEY)).hexdigest()[:16]


def split_repeated_parts(features):
    """(features without parts seen on several days, unmatched rows for those parts with the reason)."""
    import polars as pl

    repeated = features.filter(pl.col("part_id").is_duplicated())
    if repeated.height == 0:
        return features, pl.DataFrame(schema={"part_id": pl.Utf8, "side": pl.Utf8, "reason": pl.Utf8})
    days = repeated.group_by("part_id").agg(pl.col("day").cast(pl.Utf8).sort().str.join(", ").alias("days"))
    flagged = days.select(
        "part_id",
        pl.lit("features").alias("side"),
        (
            pl.lit("part has sensor features on several days (")
            + pl.col("days")
            + pl.lit("): its samples span partitions, excluded")
        ).alias("reason"),
    )
    return features.filter(~pl.col("part_id").is_duplicated()), flagged


# -- outcomes: the QA station's files and the vision branch's labels ------------------------------
def read_qa_outcomes(lake: Lake) -> tuple[Any, dict[str, str]]:
    """(outcomes of every landed outcomes.csv, file key -> why it was refused); refused files are quarantined."""
    import polars as pl

    from alumi_pipelines.lib.plant.dataset import DEFECT_TYPES, count_column

    counts = [count_column(t) for t in DEFECT_TYPES]
    schema = {"part_id": pl.Utf8, **{c: pl.Int64 for c in counts}, "outcome_source": pl.Utf8}
    frames, errors = [], {}
    for day in landing_days(lake):
        key = lake_keys.plant_landing_key(day, lake_keys.OUTCOMES_FILE)
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
        frames.append(
            table.select(
                pl.col(columns["part_id"]).str.strip_chars().alias("part_id"),
                # a count that is not a whole number becomes null: the join reports it per part
                *[pl.col(columns[c]).str.strip_chars().cast(pl.Int64, strict=False).alias(c) for c in counts],
                pl.lit(key).alias("outcome_source"),
            )
        )
    lake.delete(lake_keys.OUTCOME_FILES)
    for key in errors:
        lake.write_bytes(lake_keys.outcome_quarantine_file_key(key), lake.read_bytes(key))
    lake.write_table(
        lake_keys.OUTCOME_ERRORS_KEY,
        pl.DataFrame(
            {"file": list(errors), "reason": list(errors.values())}, schema={"file": pl.Utf8, "reason": pl.Utf8}
        ),
    )
    outcomes = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    return outcomes, errors


def read_vision_outcomes(lake: Lake) -> tuple[Any, Any, str]:
    """(outcomes or None, rejected detections or None, note) from processed labels of images that carry a part_id."""
    import polars as pl

    from alumi_pipelines.assets.processed import read_processed
    from alumi_pipelines.lib.plant.dataset import outcomes_from_detections

    images, labels = read_processed(lake)
    if "part_id" in images.columns:
        inspected = (
            images.select("image_id", pl.col("part_id").cast(pl.Utf8))
            .filter(pl.col("part_id").is_not_null() & (pl.col("part_id") != ""))
            .unique("image_id")
        )
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
