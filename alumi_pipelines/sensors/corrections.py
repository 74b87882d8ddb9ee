"""corrections_sensor: new incoming corrections → validate them; enough since the champion → retrain."""

import datetime as dt
import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from alumi_pipelines.assets.corrections import read_validated_corrections
from alumi_pipelines.assets.training.champion import champion_record
from alumi_pipelines.jobs import corrections_job, retraining_job
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


def corrections_since(lake: Lake, champion: dict | None) -> int:
    """Validated corrections newer than the champion's training (all of them without a champion)."""
    table = read_validated_corrections(lake)
    if table is None or table.is_empty():
        return 0
    if not champion or champion.get("trained_at") is None:
        return table.height
    trained = dt.datetime.fromtimestamp(float(champion["trained_at"]), dt.UTC)  # epoch seconds
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
def corrections_sensor(context: SensorEvaluationContext, lake: Lake, pipeline_settings: PipelineSettings):
    cursor = json.loads(context.cursor) if context.cursor else {}
    files = lake.list_files(lake_keys.CORRECTIONS_INCOMING)
    signature = f"{len(files)}:{max((f.mtime for f in files), default=0):.3f}"
    requests, reasons = [], []
    if files and signature != cursor.get("incoming"):
        requests.append(
            RunRequest(
                run_key=f"corrections:{signature}",
                job_name=corrections_job.name,
                tags={"alumi/trigger": "corrections_sensor"},
            )
        )
        reasons.append(f"{len(files)} incoming correction files changed")
        cursor["incoming"] = signature
    champion = champion_record(lake)
    n, threshold = corrections_since(lake, champion), pipeline_settings.retrain_corrections
    if n >= threshold:
        key = f"{(champion or {}).get('version', 'none')}:{n // threshold}"
        if key != cursor.get("retrain"):
            requests.append(
                RunRequest(
                    run_key=f"retrain-corrections:{key}",
                    job_name=retraining_job.name,
                    tags={"alumi/trigger": "corrections_sensor", "alumi/corrections": str(n)},
                )
            )
            reasons.append(f"{n} validated corrections since champion v{(champion or {}).get('version', '-')}")
            cursor["retrain"] = key
    if not requests:
        return SkipReason(f"{n} validated corrections since the champion (threshold {threshold}); no new files")
    context.log.info("; ".join(reasons))
    return SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))
