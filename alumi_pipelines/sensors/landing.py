"""landing_sensor: a complete new (or re-dropped) landing batch → its partition and an ingestion run."""

import json

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from alumi_pipelines.assets.raw import LandingBatch, list_landing_batches
from alumi_pipelines.jobs import ingestion_job
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources.lake import Lake


def batch_signature(batch: LandingBatch) -> str:
    return f"{batch.files}:{batch.newest_mtime:.3f}"


@sensor(
    job=ingestion_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="Watches landing/ for batches whose _batch.json marker is present (a half-copied batch has none) "
    "and requests one ingestion run per new or changed batch. The cursor maps batch → file count and newest "
    "modification time, so the same batch content is never requested twice.",
)
def landing_sensor(context: SensorEvaluationContext, lake: Lake):
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    batches = list_landing_batches(lake)
    incomplete = [b.batch_id for b in batches if not b.complete]
    todo = [b for b in batches if b.complete and seen.get(b.batch_id) != batch_signature(b)]
    if not todo:
        waiting = f"; waiting for the marker of {', '.join(incomplete[:5])}" if incomplete else ""
        return SkipReason(f"no new complete landing batch ({len(seen)} known){waiting}")
    for b in todo:
        seen[b.batch_id] = batch_signature(b)
    known = set(context.instance.get_dynamic_partitions(landing_batches.name))
    new_partitions = [b.batch_id for b in todo if b.batch_id not in known]
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"{b.batch_id}:{batch_signature(b)}",
                partition_key=b.batch_id,
                tags={"alumi/trigger": "landing_sensor"},
            )
            for b in todo
        ],
        dynamic_partitions_requests=[landing_batches.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(seen, sort_keys=True),
    )
