"""Predictions: what the deployed detector answered on the edge, one UTC day at a time, and its drift.

``edge_predictions`` (check ``prediction_drift``) calls :func:`collect_prediction_day` for the day table (every
device's hourly logs ``predictions/<device>/<day>/*.parquet`` → ``processed/predictions/<day>.parquet``),
:func:`prediction_reference` for what to compare it with, ``lib.drift.prediction_drift`` for the verdict and
:func:`write_prediction_drift_report` for ``reports/prediction_drift/``, which drift_sensor watches.

The reference is the champion's own predictions in its first ``reference_days`` days in service: the earliest
days, on or after the day it became champion (``recorded_at`` of ``models/champion.json``) and before the day
checked, on which edge devices logged predictions of its model version. The predictions the champion made on
the test split at evaluation time are not stored, and would not be a fair reference anyway: the test split is
curated and class-stratified, evaluated with ultralytics' thresholds on the PyTorch weights, while the plant
sees mostly clean parts through the INT8/TensorRT runtime and the edge's thresholds. The first days in service
share the runtime, thresholds, cameras and part mix, so a failed check means the model answers differently
from how it answered when it was rolled out. What it cannot see is a model that was off from day one (the
image drift check compares inputs with the training set) or a change that happens within the reference days.
Until the reference days exist the check is not evaluated and says so; only the champion's version is
compared (devices still serving another version during a rollout are counted, not compared).
"""

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from alumi_pipelines.assets.metadata import counts_md, histogram_md, md_table
from alumi_pipelines.assets.reports import publish_report, report_links
from alumi_pipelines.assets.training.champion import champion_record
from alumi_pipelines.partitions import prediction_days
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


class PredictionDriftConfig(Config):
    reference_days: int = Field(
        default=3,
        ge=1,
        description="how many of the champion's first days in service make the reference of the prediction_drift check",
    )
    threshold_share: Optional[float] = Field(
        default=None,
        gt=0,
        le=1,
        description="the check fails when at least this share of the compared columns (confidence, class) drifted "
        "(default: the pipeline_settings resource's drift_share, env ALUMI_DRIFT_SHARE)",
    )
    min_boxes: int = Field(
        default=1000,
        ge=1,
        description="fewer boxes of the champion on the day or in the reference: the check is not evaluated "
        "(evidently's confidence distance flags about 1 day in 3 of unchanged predictions at 200 boxes, "
        "1 in 200 at 1,000)",
    )
    max_rows: int = Field(default=5000, ge=1000, description="boxes per side given to evidently (bounded sample)")


@asset(
    deps=["edge_release"],
    group_name="predictions",
    partitions_def=prediction_days,
    owners=["team:data-science"],
    kinds={"parquet", "evidently"},
    description="Every edge device's prediction logs of one UTC day (predictions/<device>/<day>/, uploaded by "
    "`alumi-edge sync`) in one table, one row per predicted box (a request without a box is one row without a "
    "class), in processed/predictions/<day>.parquet; metadata counts requests, boxes, devices, model versions, "
    "classes and confidence quantiles. Rows without a time or request id, and boxes without a confidence in 0..1, "
    "are dropped and counted; unreadable files are skipped and named.",
    check_specs=[
        AssetCheckSpec(
            "prediction_drift",
            asset="edge_predictions",
            description="Evidently drift of the champion's predictions of the day (box confidences and class mix) "
            "against its own predictions in its first days in service. Failing means the deployed model answers "
            "differently from how it answered at rollout (new defects, a changed line or camera, a degrading "
            "model): the report lands in reports/prediction_drift/ and drift_sensor requests a retraining run. Not "
            "evaluated (passes, says why) before the reference days exist or with too few boxes.",
        )
    ],
)
def edge_predictions(
    context: AssetExecutionContext, config: PredictionDriftConfig, lake: Lake, pipeline_settings: PipelineSettings
):
    day = context.partition_key
    collected = collect_prediction_day(lake, day)
    for problem in collected.problems[:20]:
        context.log.warning(f"skipped {problem}")
    summary = collected.summary
    context.log.info(
        f"{day}: {summary['requests']} requests, {summary['boxes']} boxes from {len(summary['devices'])} devices "
        f"({collected.files} files, {collected.dropped_rows} rows dropped)"
    )
    quantiles = summary["confidence"]
    unreadable = "\n".join(collected.problems[:20])
    if len(collected.problems) > 20:
        unreadable += f"\nand {len(collected.problems) - 20} more"
    yield MaterializeResult(
        metadata={
            "requests": summary["requests"],
            "requests_without_boxes": summary["requests_without_boxes"],
            "boxes": summary["boxes"],
            "devices": MetadataValue.text(", ".join(summary["devices"]) or "none"),
            "model_versions": MetadataValue.md(counts_md("model version", summary["model_versions"], "requests")),
            "class_histogram": MetadataValue.md(histogram_md(summary["class_counts"])),
            "confidence_quantiles": MetadataValue.md(md_table(list(quantiles), [list(quantiles.values())])),
            "files": collected.files,
            "dropped_rows": collected.dropped_rows,
            "rows_outside_day": summary["rows_outside_day"],
            "unreadable_files": MetadataValue.text(unreadable or "none"),
            "table": MetadataValue.path(lake.uri(collected.key)),
        }
    )
    threshold = config.threshold_share if config.threshold_share is not None else pipeline_settings.drift_share
    verdict = check_prediction_drift(lake, day, collected.table, config, threshold)
    context.log.info(f"prediction_drift {day}: {verdict.message}")
    yield AssetCheckResult(
        check_name="prediction_drift",
        passed=verdict.passed,
        severity=AssetCheckSeverity.ERROR,
        description=verdict.message,
        metadata=verdict.metadata(lake),
    )


# -- predictions/<device>/<day> → processed/predictions/<day> (zone I/O) ------------------------------
@dataclass
class PredictionDay:
    day: str
    table: Any  # polars DataFrame in lib.drift.PREDICTION_TABLE_SCHEMA
    key: str  # where the table was written
    files: int
    dropped_rows: int
    problems: list[str]
    summary: dict


def read_prediction_logs(lake: Lake, day: str):
    """(day table, files read, rows dropped, problems) from every device's logs of ``day``."""
    import polars as pl

    from alumi_pipelines.lib.drift import PredictionLogError, empty_prediction_table, prediction_log_rows

    frames, problems = [], []
    files = dropped = 0
    for device in lake.list_dirs(lake_keys.PREDICTIONS):
        for f in lake.list_files(lake_keys.predictions_day_prefix(device, day)):
            if not f.key.endswith(".parquet"):
                continue
            files += 1
            try:
                rows, lost = prediction_log_rows(lake.read_table(f.key), device=device, source_file=f.key)
            except (PredictionLogError, pl.exceptions.PolarsError, OSError) as exc:
                problems.append(f"{f.key}: {type(exc).__name__}: {exc}")
                continue
            frames.append(rows)
            dropped += lost
    table = pl.concat(frames) if frames else empty_prediction_table()
    table = table.sort(["time", "device", "request_id", "class_name", "confidence"], nulls_last=True)
    return table, files, dropped, problems


def collect_prediction_day(lake: Lake, day: str) -> PredictionDay:
    """Every device's prediction logs of ``day`` → ``processed/predictions/<day>.parquet`` (always written)."""
    from alumi_pipelines.lib.drift import prediction_summary

    table, files, dropped, problems = read_prediction_logs(lake, day)
    key = lake.write_table(lake_keys.processed_predictions_key(day), table)
    return PredictionDay(day, table, key, files, dropped, problems, prediction_summary(table, day))


def read_prediction_day(lake: Lake, day: str):
    """The day table: the processed one when the day was materialised, else read from the logs."""
    key = lake_keys.processed_predictions_key(day)
    if lake.exists(key):
        return lake.read_table(key)
    return read_prediction_logs(lake, day)[0]


def prediction_log_days(lake: Lake) -> list[str]:
    """Every day any device has prediction logs for, sorted."""
    days: set[str] = set()
    for device in lake.list_dirs(lake_keys.PREDICTIONS):
        days.update(d for d in lake.list_dirs(lake_keys.predictions_device_prefix(device)) if _is_day(d))
    return sorted(days)


def _is_day(name: str) -> bool:
    try:
        lake_keys.check_prediction_day(name)
    except ValueError:
        return False
    return True


def prediction_reference(lake: Lake, model_version: str, before: str, days: int, since: str | None = None):
    """(boxes, days used): the boxes of ``model_version`` in the first ``days`` days it served predictions,
    on or after ``since`` and before ``before``. Fewer days than asked means the reference is not complete yet."""
    import polars as pl

    from alumi_pipelines.lib.drift import empty_prediction_table, prediction_boxes

    frames, used = [], []
    for day in prediction_log_days(lake):
        if day >= before or len(used) == days:
            break
        if since is not None and day < since:
            continue
        table = read_prediction_day(lake, day)
        if table.filter(pl.col("model_version") == model_version).is_empty():
            continue
        used.append(day)
        frames.append(prediction_boxes(table, model_version))
    boxes = pl.concat(frames) if frames else prediction_boxes(empty_prediction_table(), model_version)
    return boxes, used


# -- the check and reports/prediction_drift ------------------------------------------------------------
@dataclass
class PredictionVerdict:
    passed: bool
    evaluated: bool
    message: str
    model_version: str | None = None
    reference_days: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # the drift summary when evaluated
    latest: dict | None = None  # the report's latest.json entry when evaluated

    def metadata(self, lake: Lake) -> dict:
        out: dict[str, Any] = {
            "evaluated": self.evaluated,
            "model_version": MetadataValue.text(self.model_version or "none"),
            "reference_days": MetadataValue.text(", ".join(self.reference_days) or "none"),
        }
        if self.evaluated and self.latest is not None:
            out.update(
                {
                    "drift_share": self.summary["drift_share"],
                    "threshold_share": self.summary["threshold_share"],
                    "drifted_columns": MetadataValue.text(", ".join(self.summary["drifted_columns"]) or "none"),
                    "boxes_compared": MetadataValue.text(
                        f"{self.summary['reference_rows']} reference / {self.summary['current_rows']} current"
                    ),
                    **report_links(lake, self.latest["html"]),
                    "report_id": self.latest["report_id"],
                }
            )
        return out


def champion_since(champion: dict) -> str | None:
    """The UTC day the champion became champion (its record's ``recorded_at``), or None when unknown."""
    try:
        moment = dt.datetime.fromisoformat(str(champion["recorded_at"]))
    except (KeyError, ValueError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).date().isoformat()


def check_prediction_drift(
    lake: Lake, day: str, table, config: PredictionDriftConfig, threshold: float
) -> PredictionVerdict:
    """The champion's boxes of ``day`` against its first days in service; writes the report when evaluated."""
    from alumi_pipelines.lib.drift import prediction_boxes, prediction_drift

    champion = champion_record(lake)
    if not champion or not champion.get("version"):
        return PredictionVerdict(True, False, f"not evaluated: no champion model ({lake_keys.CHAMPION_RECORD}) yet")
    version = str(champion["version"])
    current = prediction_boxes(table, version)
    reference, used = prediction_reference(lake, version, day, config.reference_days, champion_since(champion))
    base = {"model_version": version, "reference_days": used}
    served_today = bool(table.height) and (table["model_version"] == version).any()
    if len(used) < config.reference_days:
        what = "is one of them" if served_today else f"has no predictions of v{version}"
        return PredictionVerdict(
            True,
            False,
            f"not evaluated: the reference is the first {config.reference_days} days v{version} served, "
            f"{len(used)} before {day} so far; this day {what}",
            **base,
        )
    if current.height < config.min_boxes or reference.height < config.min_boxes:
        return PredictionVerdict(
            True,
            False,
            f"not evaluated: {current.height} boxes of v{version} on {day}, {reference.height} in the reference "
            f"(at least {config.min_boxes} each needed)",
            **base,
        )
    result = prediction_drift(reference, current, max_rows=config.max_rows, threshold_share=threshold)
    summary = {
        **result.summary(),
        "day": day,
        "model_version": version,
        "reference_days": used,
        "reference": f"champion v{version}, its first {len(used)} days in service ({', '.join(used)})",
    }
    report_id = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()[:16]
    latest = write_prediction_drift_report(lake, report_id, result.html, summary)
    drifted = ", ".join(result.drifted_columns) or "none"
    message = (
        f"drift share {result.drift_share:.2f} (threshold {threshold:g}; drifted: {drifted}) of v{version} on {day} "
        f"against {', '.join(used)}"
    )
    return PredictionVerdict(result.passed, True, message, summary=summary, latest=latest, **base)


def write_prediction_drift_report(lake: Lake, report_id: str, html: bytes, summary: dict) -> dict:
    """reports/prediction_drift/<id>.html + .json, then latest.json (what drift_sensor reads).

    latest.json names the report of the newest day checked: checking an older day again writes its report
    but leaves latest.json on the newer day.
    """
    latest = {k: summary[k] for k in ("passed", "drift_share", "day", "model_version")}
    return publish_report(
        lake,
        lake_keys.prediction_drift_report_key,
        lake_keys.PREDICTION_DRIFT_LATEST,
        report_id,
        html,
        summary,
        latest,
        newest_by="day",
    )
