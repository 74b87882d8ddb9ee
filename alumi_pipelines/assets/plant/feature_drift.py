"""``plant_feature_drift`` (group ``plant_drift``) and its check ``plant_feature_drift_ok``: newest feature days
against the champion's training days (evidently).

:func:`write_drift_report` writes the report and reports/plant_drift/latest.json, which the drift sensor reads
to request ``plant_retraining_job``.
"""

import datetime as dt
from collections.abc import Mapping
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

from alumi_pipelines.assets.plant.risk_champion import champion_days
from alumi_pipelines.assets.plant.sensor_features import plant_sensor_features, read_plant_features
from alumi_pipelines.assets.reports import publish_report, report_links
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake

GROUP = "plant_drift"
DRIFT_STATS = ("mean", "std")


class PlantDriftConfig(Config):
    current_days: int = Field(default=1, description="newest feature days compared with the reference")
    threshold_share: float = Field(default=0.5, description="drifted when this share of feature columns drifted")
    max_rows: int = Field(default=5000, description="rows evidently sees per side (bounded sample)")


@asset(
    deps=[plant_sensor_features],
    group_name=GROUP,
    owners=["team:data-science"],
    kinds={"evidently", "json"},
    description="Evidently drift of the per-part features (mean and std of every signal) of the newest days "
    "against the champion's training and validation days (before there is a champion: the earlier days). The "
    "report goes to reports/plant_drift/<id>.html|json and reports/plant_drift/latest.json "
    "({report_id, passed, drift_share, ...}), which the drift sensor reads to request retraining.",
    check_specs=[
        AssetCheckSpec(
            "plant_feature_drift_ok",
            asset="plant_feature_drift",
            blocking=False,
            description="Warns when the share of drifted feature columns reaches the threshold.",
        ),
    ],
)
def plant_feature_drift(context: AssetExecutionContext, config: PlantDriftConfig, lake: Lake):
    import polars as pl

    from alumi_pipelines.lib.drift import feature_drift
    from alumi_pipelines.lib.plant.samples import SIGNALS

    if config.current_days < 1:
        raise Failure(f"plant_feature_drift: current_days={config.current_days}: must be at least 1")
    features = read_plant_features(lake)
    days = sorted({d.isoformat() for d in features["day"].to_list()})
    current_days = days[-config.current_days :]
    reference_days = [d for d in champion_days(lake) if d in days and d not in current_days]
    reference_source = "champion training days"
    if not reference_days:
        reference_days, reference_source = [d for d in days if d not in current_days], "earlier days"
    if not reference_days:
        context.log.warning(f"plant_feature_drift: {len(days)} day(s) of features, none left as reference")
        yield MaterializeResult(metadata={"skipped": MetadataValue.text("no reference days yet"), "days": len(days)})
        yield AssetCheckResult(
            check_name="plant_feature_drift_ok",
            passed=True,
            severity=AssetCheckSeverity.WARN,
            metadata={"skipped": MetadataValue.text("no reference days yet")},
        )
        return
    day_text = pl.col("day").cast(pl.Utf8)
    reference = features.filter(day_text.is_in(reference_days))
    current = features.filter(day_text.is_in(current_days))
    wanted = [f"{s}__{stat}" for s in SIGNALS for stat in DRIFT_STATS]
    # evidently refuses a column without values on either side; such columns are named in the metadata instead
    columns = [
        c for c in wanted if reference[c].null_count() < reference.height and current[c].null_count() < current.height
    ]
    result = feature_drift(
        reference, current, columns, max_rows=config.max_rows, threshold_share=config.threshold_share
    )
    report_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
    latest = write_drift_report(
        lake,
        result,
        report_id=report_id,
        extra={
            "reference_days": reference_days,
            "current_days": current_days,
            "reference_source": reference_source,
            "columns": columns,
            "dagster_run_id": context.run_id,
        },
    )
    context.log.info(
        f"plant drift {report_id}: share {result.drift_share:.3f} "
        f"({'passed' if result.passed else 'DRIFTED'}), drifted {result.drifted_columns}"
    )
    yield MaterializeResult(
        metadata={
            "report_id": report_id,
            "drift_share": result.drift_share,
            "passed": result.passed,
            "drifted_columns": MetadataValue.text(", ".join(result.drifted_columns) or "none"),
            "skipped_columns": MetadataValue.text(", ".join(sorted(set(wanted) - set(columns))) or "none"),
            "reference": MetadataValue.text(
                f"{reference_source}: {', '.join(reference_days)} ({reference.height} parts)"
            ),
            "current": MetadataValue.text(f"{', '.join(current_days)} ({current.height} parts)"),
            **report_links(lake, latest["html"]),
        }
    )
    yield AssetCheckResult(
        check_name="plant_feature_drift_ok",
        passed=result.passed,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "drift_share": result.drift_share,
            "threshold_share": result.threshold_share,
            "drifted_columns": MetadataValue.text(", ".join(result.drifted_columns) or "none"),
            "report_id": report_id,
        },
    )


# -- processed → reports (zone I/O) ----------------------------------------------------------------
def write_drift_report(lake: Lake, result, *, report_id: str, extra: Mapping[str, Any]) -> dict:
    """Write the evidently report (HTML + JSON) and reports/plant_drift/latest.json; returns latest."""
    latest = {
        "passed": bool(result.passed),
        "drift_share": float(result.drift_share),
        "threshold_share": float(result.threshold_share),
        "drifted_columns": list(result.drifted_columns),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        **extra,
    }
    return publish_report(
        lake,
        lake_keys.plant_drift_report_key,
        lake_keys.PLANT_DRIFT_LATEST,
        report_id,
        result.html,
        result.json,
        latest,
    )
