"""Detector training, pure logic over local paths: nothing here imports dagster or touches the lake.

- ``profiles``: the ``ci`` / ``cpu`` / ``gpu`` defaults, overrides validated, sweeps;
- ``dataset``: the YOLO folder a run reads, checked before training starts;
- ``autoconf``: image size, batch and CPU threads chosen from the data and the machine;
- ``runs``: training and evaluation with ultralytics (offline), per-epoch metrics, every core on a CPU;
- ``offline``: ultralytics with every network path off;
- ``provenance``: per-run scratch folders and the code version;
- ``gate``: the promotion rule.

The names most callers need are re-exported here.
"""

from alumi_pipelines.lib.training.autoconf import AutoChoice, resolve_auto
from alumi_pipelines.lib.training.dataset import (
    IMAGE_SUFFIXES,
    SPLITS,
    DatasetError,
    DatasetSummary,
    WeightsError,
    check_base_weights,
    check_yolo_dataset,
    image_files,
    link_yolo_dataset,
    read_names,
)
from alumi_pipelines.lib.training.profiles import (
    PROFILE_DEFAULTS,
    PROFILES,
    SWEEP_MODES,
    SWEEPABLE_KEYS,
    TRAINING_KEYS,
    TrainingConfigError,
    best_trial,
    model_yaml_exists,
    profile_defaults,
    resolve_training_args,
    sweep_trials,
    ultralytics_train_kwargs,
    validate_training_args,
)
from alumi_pipelines.lib.training.provenance import (
    code_version,
    scratch_dir,
)
from alumi_pipelines.lib.training.runs import (
    EpochCallback,
    TrainingOutcome,
    checkpoint_classes,
    clean_metric_name,
    evaluate_detector,
    train_detector,
)

__all__ = [
    "AutoChoice",
    "checkpoint_classes",
    "resolve_auto",
    "DatasetError",
    "DatasetSummary",
    "EpochCallback",
    "IMAGE_SUFFIXES",
    "PROFILES",
    "PROFILE_DEFAULTS",
    "SPLITS",
    "SWEEPABLE_KEYS",
    "SWEEP_MODES",
    "TRAINING_KEYS",
    "TrainingConfigError",
    "TrainingOutcome",
    "WeightsError",
    "best_trial",
    "check_base_weights",
    "check_yolo_dataset",
    "clean_metric_name",
    "code_version",
    "evaluate_detector",
    "image_files",
    "link_yolo_dataset",
    "model_yaml_exists",
    "profile_defaults",
    "read_names",
    "resolve_training_args",
    "scratch_dir",
    "sweep_trials",
    "train_detector",
    "ultralytics_train_kwargs",
    "validate_training_args",
]
