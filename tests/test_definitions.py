"""The code location loads fast and without the heavy libraries."""

import json
import subprocess
import sys

HEAVY = (
    "torch",
    "ultralytics",
    "mlflow",
    "evidently",
    "great_expectations",
    "xgboost",
    "albumentations",
    "onnxruntime",
    "onnx",
    "cv2",
    "polars",
    "pyarrow",
)


def test_definitions_load_without_heavy_imports():
    code = (
        "import sys, json; import alumi_pipelines.definitions as d; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_definitions_contain_the_documented_names():
    from alumi_pipelines.definitions import defs

    repo = defs.get_repository_def()
    jobs = {j for j in repo.job_names if not j.startswith("__")}
    assert jobs == {
        "ingestion_job",
        "corrections_job",
        "drift_job",
        "training_job",
        "export_job",
        "retraining_job",
        "end_to_end_job",
        "prediction_job",
        "review_job",
        "plant_risk_job",
        "plant_retraining_job",
    }
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {
        "raw_images",
        "raw_labels",
        "processed_images",
        "processed_labels",
        "gold_dataset",
        "edge_release",
        "edge_predictions",
        "review_queue",
        "label_studio_tasks",
        "plant_sensor_raw",
        "plant_sensor_features",
        "plant_feature_drift",
        "defect_risk_champion",
    } <= keys
    groups = {repo.asset_graph.get(k).group_name for k in repo.asset_graph.get_all_asset_keys()}
    assert groups == {
        "raw",
        "processed",
        "corrections",
        "gold",
        "drift",
        "training",
        "export",
        "release",
        "predictions",
        "review",
        "plant_raw",
        "plant_features",
        "plant_risk",
        "plant_drift",
    }
    assert {s.name for s in repo.sensor_defs} == {
        "landing_sensor",
        "corrections_sensor",
        "drift_sensor",
        "review_sensor",
    }
    assert {s.name for s in repo.schedule_defs} == {"weekly_drift_schedule"}


def test_every_asset_and_check_says_what_it_is():
    from alumi_pipelines.definitions import defs

    repo = defs.get_repository_def()
    graph = repo.asset_graph
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 30, key
        assert node.owners, f"{key.to_user_string()} has no owner"
        assert node.group_name != "default", key
    for check_key in graph.asset_check_keys:
        spec = graph.get_check_spec(check_key)
        assert spec.description and len(spec.description) > 30, check_key
