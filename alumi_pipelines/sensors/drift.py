"""drift_sensor (a failed drift check → retraining) and weekly_drift_schedule."""

import json

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from alumi_pipelines.jobs import drift_job, plant_retraining_job, retraining_job
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake

# drift report (written by the drift assets and checks) → the job that retrains what drifted
WATCHED = {
    lake_keys.DRIFT_LATEST: retraining_job.name,  # image features against the champion's training set
    lake_keys.PREDICTION_DRIFT_LATEST: retraining_job.name,  # edge predictions against the champion's first days
    lake_keys.PLANT_DRIFT_LATEST: plant_retraining_job.name,
}


@sensor(
    jobs=[retraining_job, plant_retraining_job],
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Reads the latest drift reports (reports/drift/latest.json, reports/prediction_drift/latest.json, "
    "reports/plant_drift/latest.json); a new failed report requests one run of the job that retrains what drifted "
    "(failed reports of one tick that name the same job share a run; the cursor keeps the handled report ids).",
)
def drift_sensor(context: SensorEvaluationContext, lake: Lake):
    handled: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    failed: dict[str, list[str]] = {}  # job → failed report ids, in WATCHED order
    notes = []
    for key, job_name in WATCHED.items():
        if not lake.exists(key):
            continue
        latest = lake.read_json(key)
        if latest["report_id"] == handled.get(key):
            continue
        handled[key] = latest["report_id"]
        if latest["passed"]:
            notes.append(f"{key}: report {latest['report_id']} passed (share {latest['drift_share']:.2f})")
            continue
        failed.setdefault(job_name, []).append(latest["report_id"])
    requests = [
        RunRequest(
            run_key=f"drift:{'+'.join(ids)}",
            job_name=job_name,
            tags={"alumi/trigger": "drift_sensor", "alumi/drift_report": ",".join(ids)},
        )
        for job_name, ids in failed.items()
    ]
    if not requests:
        return SensorResult(
            skip_reason=SkipReason("; ".join(notes) or "no new failed drift report"),
            cursor=json.dumps(handled, sort_keys=True),
        )
    return SensorResult(run_requests=requests, cursor=json.dumps(handled, sort_keys=True))


weekly_drift_schedule = ScheduleDefinition(
    name="weekly_drift_schedule",
    job=drift_job,
    cron_schedule="0 6 * * 1",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every Monday 06:00: compare the newest batch with the champion's training set.",
)
