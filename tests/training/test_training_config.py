"""Training config: profiles, explicit overrides, validation, sweeps (no training here)."""

from __future__ import annotations

import pytest

from alumi_pipelines.lib import training
from alumi_pipelines.lib.training import TrainingConfigError, resolve_training_args, sweep_trials


def test_profiles_differ_in_size_and_ci_is_tiny():
    ci, cpu, gpu = (resolve_training_args(p) for p in ("ci", "cpu", "gpu"))
    assert (ci["epochs"], ci["imgsz"], ci["device"], ci["workers"]) == (2, 64, "cpu", 0)
    assert (cpu["epochs"], cpu["imgsz"], cpu["imgsz_max"], cpu["batch"], cpu["device"]) == (
        30,
        "auto",
        320,
        "auto",
        "cpu",
    )
    assert (gpu["epochs"], gpu["imgsz"], gpu["imgsz_max"], gpu["device"], gpu["architecture"]) == (
        150,
        "auto",
        1280,
        "0",
        "yolo11s.yaml",
    )
    assert (ci["warm_start"], cpu["warm_start"], gpu["warm_start"]) == (False, True, True)
    assert ci["threads"] == cpu["threads"] == 0  # every core
    assert ci["epochs"] < cpu["epochs"] < gpu["epochs"]
    assert set(ci) == set(cpu) == set(gpu) == set(training.TRAINING_KEYS)


def test_explicit_fields_override_profile_and_none_keeps_default():
    args = resolve_training_args("ci", {"epochs": 5, "imgsz": 96, "mosaic": 0.0, "batch": None})
    assert (args["epochs"], args["imgsz"], args["mosaic"]) == (5, 96, 0.0)
    assert args["batch"] == training.PROFILE_DEFAULTS["ci"]["batch"]
    assert training.PROFILE_DEFAULTS["ci"]["epochs"] == 2  # the defaults are not mutated


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(TrainingConfigError, match=r"unknown training config key 'epoch' \(did you mean 'epochs'\?\)"):
        resolve_training_args("ci", {"epoch": 3})


def test_unknown_profile_is_rejected():
    with pytest.raises(TrainingConfigError, match="profile 'laptop': not one of ci, cpu, gpu"):
        resolve_training_args("laptop")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"imgsz": 100}, r"imgsz=100: must be a multiple of 32"),
        ({"epochs": 0}, r"epochs=0: must be at least 1"),
        ({"batch": 0}, r"batch=0: must be >= 1"),
        ({"batch": -1}, r"batch=-1: auto batch needs a GPU device"),
        ({"mosaic": 1.5}, r"mosaic=1.5: must be a number in \[0, 1\]"),
        ({"fliplr": "yes"}, r"fliplr='yes': must be a number"),
        ({"hsv": 1}, r"hsv=1: must be true or false"),
        ({"architecture": "yolo11n.pt"}, r"architecture='yolo11n.pt': must be a model yaml"),
        ({"architecture": "yolo99z.yaml"}, r"architecture='yolo99z.yaml': is neither a local yaml"),
        ({"max_minutes": -5}, r"max_minutes=-5: must be a positive number"),
        ({"optimizer": "Lion"}, r"optimizer='Lion': must be one of"),
        ({"cache": "gpu"}, r"cache='gpu': must be false, 'ram' or 'disk'"),
    ],
)
def test_bad_values_name_the_key_and_rule(overrides, message):
    with pytest.raises(TrainingConfigError, match=message):
        resolve_training_args("ci", overrides)


def test_architectures_shipped_with_ultralytics_are_found():
    assert training.model_yaml_exists("yolo11n.yaml")
    assert training.model_yaml_exists("yolo11s.yaml")
    assert training.model_yaml_exists("yolov8n.yaml")
    assert not training.model_yaml_exists("yolo11q-nothing.yaml")


def test_ultralytics_kwargs_map_switches():
    args = resolve_training_args("ci", {"hsv": False, "max_minutes": 30, "cache": "false"})
    kwargs = training.ultralytics_train_kwargs(args)
    assert (kwargs["hsv_h"], kwargs["hsv_s"], kwargs["hsv_v"]) == (0.0, 0.0, 0.0)
    assert kwargs["time"] == pytest.approx(0.5)
    assert kwargs["cache"] is False
    assert not {"architecture", "base_weights", "hsv", "max_minutes"} & set(kwargs)
    on = training.ultralytics_train_kwargs(resolve_training_args("ci"))
    assert on["hsv_s"] == 0.7 and "time" not in on


def test_grid_sweep_enumerates_every_combination_in_order():
    base = resolve_training_args("ci")
    trials = sweep_trials(base, {"lr0": [0.01, 0.02], "mosaic": [0.0, 1.0]})
    assert [(t["lr0"], t["mosaic"]) for t in trials] == [(0.01, 0.0), (0.01, 1.0), (0.02, 0.0), (0.02, 1.0)]
    assert all(t["epochs"] == base["epochs"] for t in trials)
    assert len(sweep_trials(base, {"lr0": [0.01, 0.02], "mosaic": [0.0, 1.0]}, n_trials=3)) == 3


def test_random_sweep_is_seeded_and_without_repeats():
    base = resolve_training_args("ci")
    space = {"lr0": [0.001, 0.01, 0.02], "fliplr": [0.0, 0.5], "scale": [0.2, 0.5]}
    a = sweep_trials(base, space, mode="random", n_trials=4, seed=7)
    b = sweep_trials(base, space, mode="random", n_trials=4, seed=7)
    points = [(t["lr0"], t["fliplr"], t["scale"]) for t in a]
    assert points == [(t["lr0"], t["fliplr"], t["scale"]) for t in b]
    assert len(set(points)) == 4
    assert len(sweep_trials(base, space, mode="random", n_trials=50)) == 12  # capped at the grid size


def test_no_sweep_is_one_trial():
    base = resolve_training_args("ci")
    assert sweep_trials(base, None) == [base]


@pytest.mark.parametrize(
    ("space", "kwargs", "message"),
    [
        ({"epoch": [1, 2]}, {}, r"sweep: unknown training config key 'epoch'"),
        ({"device": ["cpu", "0"]}, {}, r"sweep key 'device': cannot be swept"),
        ({"lr0": []}, {}, r"sweep key 'lr0': needs a non-empty list"),
        ({"imgsz": [64, 100]}, {}, r"sweep trial \{'imgsz': 100\}: training config imgsz=100"),
        ({"lr0": [0.01]}, {"mode": "bayes"}, r"sweep_mode 'bayes': must be one of grid, random"),
        ({"lr0": [0.01]}, {"n_trials": 0}, r"n_trials=0: must be at least 1"),
    ],
)
def test_bad_sweeps_fail_before_training(space, kwargs, message):
    with pytest.raises(TrainingConfigError, match=message):
        sweep_trials(resolve_training_args("ci"), space, **kwargs)


def test_best_trial_prefers_map50_95_then_map50_then_earliest():
    results = [
        {"val/mAP50-95": 0.2, "val/mAP50": 0.5},
        {"val/mAP50-95": 0.3, "val/mAP50": 0.4},
        {"val/mAP50-95": 0.3, "val/mAP50": 0.6},
        {"val/mAP50-95": 0.3, "val/mAP50": 0.6},
        {"val/mAP50-95": float("nan")},
    ]
    assert training.best_trial(results) == 2


def test_metric_names_are_mlflow_safe():
    assert training.clean_metric_name("metrics/mAP50-95(B)") == "val/mAP50-95"
    assert training.clean_metric_name("metrics/recall(B)") == "val/recall"
    assert training.clean_metric_name("train/box_loss") == "train/box_loss"
    assert training.clean_metric_name("odd(name)") == "odd_name_"


def test_dagster_config_collects_only_explicit_fields():
    from alumi_pipelines.assets.training.detector import DetectorTrainingConfig

    cfg = DetectorTrainingConfig(profile="ci", epochs=3, hsv=False, sweep={"lr0": [0.01, 0.02]})
    assert cfg.overrides() == {"epochs": 3, "hsv": False}
    assert resolve_training_args(cfg.profile, cfg.overrides())["epochs"] == 3
    # every config field that is not about sweeping is a training key the lib knows
    fields = set(DetectorTrainingConfig.model_fields) - {"profile", "sweep", "sweep_mode", "n_trials"}
    assert fields == set(training.TRAINING_KEYS)


def test_training_job_runs_the_training_group_under_the_concurrency_tag(tmp_path):
    from dagster import Definitions, load_asset_checks_from_package_module, load_assets_from_package_module

    from alumi_pipelines.assets import training as training_stage
    from alumi_pipelines.jobs import training_job
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings

    checks = load_asset_checks_from_package_module(training_stage)
    defs = Definitions(
        assets=load_assets_from_package_module(training_stage),
        asset_checks=checks,
        jobs=[training_job],
        resources={
            "lake": Lake(base_uri=str(tmp_path)),
            "mlflow": MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path)),
            "pipeline_settings": PipelineSettings(classes=["scratch"], home=str(tmp_path)),
        },
    )
    job = defs.resolve_job_def("training_job")
    assert job.tags["alumi/training"] == "true"
    assert job.tags["dagster/retry_on_asset_or_op_failure"] == "false"
    assert {n.name for n in job.nodes} == {
        "detector_model",
        "detector_evaluation",
        "detector_evaluation_promotion_gate",
        "champion_model",
    }
    (check,) = checks
    assert [spec.blocking for spec in check.check_specs] == [True]


def test_asset_modules_import_no_heavy_library():
    import subprocess
    import sys

    code = (
        "import sys, alumi_pipelines.assets.training.detector, alumi_pipelines.assets.training.champion; "
        "print(sorted(m for m in ('torch', 'ultralytics', 'mlflow', 'cv2', 'dagster_mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
