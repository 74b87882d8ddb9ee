"""``plant_sensor_features`` (group ``plant_features``): a day's clean samples → windowed statistics per part.

:func:`build_day_features` does the work (raw → processed, one day); :func:`read_plant_features` is how the
later stages read the features of every day.
"""

from pathlib import PurePosixPath
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

from alumi_pipelines.assets.plant.sensor_raw import plant_sensor_raw
from alumi_pipelines.partitions import ingestion_backfill, plant_days
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake

GROUP = "plant_features"


@asset(
    deps=[plant_sensor_raw],
    partitions_def=plant_days,
    backfill_policy=ingestion_backfill,
    group_name=GROUP,
    owners=["team:data-engineering"],
    kinds={"polars", "parquet"},
    description="Windowed statistics per part from the day's clean samples: per signal mean, std, min, max, "
    "slope (per second), share of samples outside the operating limits and dropout share, plus duration.",
    check_specs=[
        AssetCheckSpec(
            "plant_features_valid",
            asset="plant_sensor_features",
            blocking=True,
            description="Great Expectations suite on the features: one row per part, ids and day present, "
            "shares in [0, 1], means plausible, spreads non-negative, min <= max.",
        ),
    ],
)
def plant_sensor_features(context: AssetExecutionContext, lake: Lake):
    import polars as pl

    from alumi_pipelines.lib.plant.quality import validate_plant_features

    frames = []
    for day in context.partition_keys:
        features = build_day_features(lake, day)
        context.log.info(f"{day}: features of {features.height} parts")
        frames.append(features)
    features = pl.concat(frames, how="vertical_relaxed")
    metadata: dict[str, Any] = {
        "parts": features.height,
        "table": MetadataValue.path(lake.uri(lake_keys.plant_features_key(context.partition_keys[0]))),
    }
    if features.height:
        metadata["mean_duration_s"] = round(float(features["duration_s"].mean()), 1)
        metadata["parts_per_alloy"] = MetadataValue.json(
            dict(features.group_by("alloy").len().sort("alloy").iter_rows())
        )
    yield MaterializeResult(metadata=metadata)
    suite = validate_plant_features(features)
    yield AssetCheckResult(
        check_name="plant_features_valid",
        passed=suite.success,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "summary": MetadataValue.text(suite.summary()),
            "expectations": suite.evaluated,
            "rows": features.height,
        },
    )


# -- raw → processed (zone I/O) --------------------------------------------------------------------
def build_day_features(lake: Lake, day: str):
    """One day from raw/plant/<day> to processed/plant_features/<day> (one row per part); returns the table."""
    from alumi_pipelines.lib.plant.features import part_features

    key = lake_keys.raw_plant_key(day)
    if not lake.exists(key):
        raise FileNotFoundError(f"{key}: no raw samples for {day}; materialise plant_sensor_raw for it first")
    features = part_features(lake.read_table(key))
    lake.write_table(lake_keys.plant_features_key(day), features)
    return features


def feature_days(lake: Lake) -> list[str]:
    """Days with a features table, oldest first."""
    return [
        PurePosixPath(f.key).stem
        for f in lake.list_files(lake_keys.PLANT_FEATURES)
        if f.key.endswith(".parquet") and lake_keys.DAY_PATTERN.match(PurePosixPath(f.key).stem)
    ]


def read_plant_features(lake: Lake, days: list[str] | None = None):
    """Features of the given days (default: every day in the lake), in day and part order."""
    import polars as pl

    days = feature_days(lake) if days is None else days
    frames = [lake.read_table(lake_keys.plant_features_key(d)) for d in days]
    frames = [f for f in frames if f.height]
    if not frames:
        from alumi_pipelines.lib.plant.features import part_features
        from alumi_pipelines.lib.plant.samples import empty_clean

        return part_features(empty_clean())
    return pl.concat(frames, how="vertical_relaxed").sort("day", "part_id")
