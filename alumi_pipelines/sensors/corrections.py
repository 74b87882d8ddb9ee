"""corrections_sensor: new incoming corrections → validate them; enough since the champion → retrain."""

import datetime as dt
import json
import os

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from alumi_pipelines.jobs import corrections_job, retraining_job
from alumi_pipelines.resources import lake_layout as layout
from alumi_pipelines.resources.lake import Lake


def retrain_threshold() -> int:
    return int(os.environ.get("ALUMI_RETRAIN_CORRECTIONS", "20"))


def corrections_since(lake: Lake, champion: dict | None) -> int:
    """Validated corrections newer than the champion's training (all of them without a champion)."""
    table = layout.read_validated_corrections(lake)
    if table is None or table.is_empty():
        return 0
    if not champion or champion.get("trained_at") is None:
        return table.height
    trained = dt.datetime.fromtimestamp(float(champion["trained_at"]) / 1000, dt.timezone.utc)
    stamps = [dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in table["timestamp"].to_list()]
    return sum(t > trained for t in stamps)


@sensor(
    jobs=[corrections_job, retraining_job],
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="New files in corrections/incoming/ → a corrections_job run (validate + apply). At least "
    "ALUMI_RETRAIN_CORRECTIONS (default 20) validated corrections since the champion was trained → one "
    "retraining_job run, and another after each further batch of that many. The cursor keeps the incoming "
    "signature and the last retraining key, so nothing is requested twice.",
)
def corrections_sensor(context: SensorEvaluationContext, lake: Lake):
    cursor = json.loads(context.cursor) if context.cursor else {}
    files = lake.list_files(layout.CORRECTIONS_INCOMING)
    signature = f"{len(files)}:{max((f.mtime for f in files), default=0):.3f}"
    requests, reasons = [], []
    if files and signature != cursor.get("incoming"):
        requests.append(RunRequest(run_key=f"corrections:{signature}", job_name=corrections_job.name,
                                   tags={"alumi/trigger": "corrections_sensor"}))
        reasons.append(f"{len(files)} incoming correction files changed")
        cursor["incoming"] = signature
    champion = layout.champion_record(lake)
    n, threshold = corrections_since(lake, champion), retrain_threshold()
    if n >= threshold:
        key = f"{(champion or {}).get('version', 'none')}:{n // threshold}"
        if key != cursor.get("retrain"):
            requests.append(RunRequest(run_key=f"retrain-corrections:{key}", job_name=retraining_job.name,
                                       tags={"alumi/trigger": "corrections_sensor", "alumi/corrections": str(n)}))
            reasons.append(f"{n} validated corrections since champion v{(champion or {}).get('version', '-')}")
            cursor["retrain"] = key
    if not requests:
        return SkipReason(f"{n} validated corrections since the champion (threshold {threshold}); no new files")
    context.log.info("; ".join(reasons))
    return SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))
