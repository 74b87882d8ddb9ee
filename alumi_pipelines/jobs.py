"""Jobs users and CI run by name (see DESIGN.md: names other parts rely on)."""

import json
import os

from dagster import AssetSelection, define_asset_job

from alumi_pipelines.partitions import landing_batches

TRAINING_TAG = "alumi/training"


def training_run_tags() -> dict[str, str]:
    """Tags of runs that train: the instance runs one at a time; on Kubernetes, ALUMI_K8S_TRAINING_CONFIG
    (JSON: node selector, tolerations, GPU limits; see deploy/helm/values.yaml) routes them to the GPU pool.
    A refused gate fails the same way again, so run retries are for infrastructure failures only."""
    tags = {TRAINING_TAG: "true", "dagster/retry_on_asset_or_op_failure": "false"}
    raw = os.environ.get("ALUMI_K8S_TRAINING_CONFIG", "").strip()
    if raw:
        tags["dagster-k8s/config"] = json.dumps(json.loads(raw), sort_keys=True)
    return tags


TRAINING_TAGS = training_run_tags()
VISION = AssetSelection.all() - AssetSelection.groups("process")

ingestion_job = define_asset_job(
    "ingestion_job",
    selection=AssetSelection.groups("raw", "processed"),
    partitions_def=landing_batches,
    description="Landing batches → raw (quarantine) → processed. One partition per landing batch; a run may "
    "cover a range of batches (tags dagster/asset_partition_range_start/_end, see `alumi batches --tags`).",
)

corrections_job = define_asset_job(
    "corrections_job",
    selection=AssetSelection.assets("label_corrections"),
    description="Validate and apply everything in corrections/incoming/ (edge feedback, QA exports).",
)

drift_job = define_asset_job(
    "drift_job",
    selection=AssetSelection.assets("image_drift_report"),
    description="Compare the newest processed batches with the champion's training set (evidently).",
)

retraining_job = define_asset_job(
    "retraining_job",
    selection=AssetSelection.groups("corrections", "gold", "training", "export"),
    tags=TRAINING_TAGS,
    description="corrections → gold → train → evaluate → gate → champion → export → release: a better model "
    "reaches the stable channel with no human step; a worse one stops at the gate.",
)

end_to_end_job = define_asset_job(
    "end_to_end_job",
    selection=VISION - AssetSelection.groups("drift"),
    partitions_def=landing_batches,
    tags=TRAINING_TAGS,
    description="Everything on the vision branch for the given landing batches: ingestion, corrections, gold, "
    "training with the promotion gate, export and the edge release.",
)

JOBS = [ingestion_job, corrections_job, drift_job, retraining_job, end_to_end_job]
