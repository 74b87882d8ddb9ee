"""Every job users, CI and sensors run by name; asset modules define assets only.

Selections name asset groups (see each stage module), so this module imports no asset code.
"""

from dagster import AssetSelection, ExecutorDefinition, define_asset_job

from alumi_pipelines.partitions import landing_batches, plant_days, prediction_days
from alumi_pipelines.settings import K8sStepConfigs, k8s_step_configs, training_run_tags

TRAINING_TAG = "alumi/training"
# A refused gate or bad data fails the same way again: run retries are for infrastructure failures only.
NO_RETRY_ON_FAILURE = {"dagster/retry_on_asset_or_op_failure": "false"}
# Runs that train: the instance runs one at a time (dagster.yaml's tag limit).
TRAINING_TAGS = training_run_tags(TRAINING_TAG, NO_RETRY_ON_FAILURE)
# The one step that wants a GPU: the detector's training, sweep trials included (they run inside it).
GPU_STEPS = ("detector_model",)


def step_executor(configs: K8sStepConfigs | None) -> ExecutorDefinition | None:
    """The executor of every job, asset jobs of the UI included (``Definitions(executor=...)``).

    ``None`` on one machine: Dagster's default multiprocess executor. With ALUMI_EXECUTOR=k8s, dagster-k8s's
    ``k8s_job_executor``: each step is a Kubernetes Job of its own, with ALUMI_K8S_STEP_CONFIG (CPU node resources)
    on every step pod and ALUMI_K8S_TRAINING_CONFIG (GPU pool, GPU limit) merged into the pods of ``GPU_STEPS``
    alone. The run's own pod only orchestrates them.
    """
    if configs is None:
        return None
    from dagster_k8s import k8s_job_executor  # dagster-k8s (and the Kubernetes client) only where it is used

    config: dict = {"per_step_k8s_config": {step: configs.training_step for step in GPU_STEPS}}
    if configs.every_step:
        config["step_k8s_config"] = configs.every_step
    return k8s_job_executor.configured(config, name="alumi_k8s_executor")


EXECUTOR = step_executor(k8s_step_configs())

PLANT_GROUPS = ("plant_raw", "plant_features", "plant_risk", "plant_drift")
VISION = AssetSelection.all() - AssetSelection.groups(*PLANT_GROUPS)

# -- vision branch ---------------------------------------------------------------------------------
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

training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.groups("training"),
    tags=TRAINING_TAGS,
    description="Gold dataset → trained detector → evaluation on the frozen test split → promotion gate → "
    "champion alias. The instance runs one job tagged alumi/training at a time.",
)

export_job = define_asset_job(
    "export_job",
    selection=AssetSelection.groups("export", "release"),
    description="The champion → ONNX (parity-checked) → INT8 ONNX (accuracy-checked) → TensorRT engines or their "
    "on-device plan → signed edge release and the stable channel pointer.",
)

retraining_job = define_asset_job(
    "retraining_job",
    selection=AssetSelection.groups("corrections", "gold", "training", "export", "release"),
    tags=TRAINING_TAGS,
    description="corrections → gold → train → evaluate → gate → champion → export → release: a better model "
    "reaches the stable channel with no human step; a worse one stops at the gate.",
)

end_to_end_job = define_asset_job(
    "end_to_end_job",
    selection=VISION - AssetSelection.groups("drift", "predictions", "review"),
    partitions_def=landing_batches,
    tags=TRAINING_TAGS,
    description="Everything on the vision branch for the given landing batches: ingestion, corrections, gold, "
    "training with the promotion gate, export and the edge release.",
)

prediction_job = define_asset_job(
    "prediction_job",
    selection=AssetSelection.groups("predictions"),
    partitions_def=prediction_days,
    tags=NO_RETRY_ON_FAILURE,
    description="One UTC day of edge prediction logs (predictions/<device>/<day>/) → one table per day in "
    "processed/predictions/, and the prediction_drift check of the champion's confidences and class mix against "
    "its first days in service; a failed check writes reports/prediction_drift/latest.json for drift_sensor.",
)

review_job = define_asset_job(
    "review_job",
    selection=AssetSelection.groups("review"),
    tags=NO_RETRY_ON_FAILURE,
    description="The review queue (edge frames kept for review, champion/label disagreements, drift outliers) → "
    "Label Studio tasks with the champion's boxes as pre-annotations. review_sensor brings the reviews back.",
)

# -- plant branch ----------------------------------------------------------------------------------
plant_risk_job = define_asset_job(
    "plant_risk_job",
    selection=AssetSelection.groups(*PLANT_GROUPS),
    partitions_def=plant_days,
    tags=NO_RETRY_ON_FAILURE,
    description="The plant branch for a range of days: historian files → raw (quarantine) → features → "
    "risk dataset → XGBoost model (MLflow) → evaluation + gate → champion alias and edge file; feature drift. "
    "Run over every landed day with the tags of `alumi plant-days` (partition range start/end).",
)

plant_retraining_job = define_asset_job(
    "plant_retraining_job",
    selection=AssetSelection.groups("plant_risk"),
    tags=NO_RETRY_ON_FAILURE,
    description="Retrain the risk model on the features already in the lake: dataset → model → evaluation + gate → "
    "champion. Unpartitioned, so the drift sensor can request it without naming days.",
)

JOBS = [
    ingestion_job,
    corrections_job,
    drift_job,
    training_job,
    export_job,
    retraining_job,
    end_to_end_job,
    prediction_job,
    review_job,
    plant_risk_job,
    plant_retraining_job,
]
