"""train → evaluate → gate → champion through Dagster with the ci profile on the tiny gold dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from alumi_pipelines.assets.training.champion import champion_model
from alumi_pipelines.assets.training.detector import detector_model
from alumi_pipelines.assets.training.evaluation import detector_evaluation, promotion_gate
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _run(assets, lake, registry, instance, run_config=None):
    settings = PipelineSettings.from_settings(Settings.from_env())
    return materialize(
        assets,
        resources={"lake": lake, "mlflow": registry, "pipeline_settings": settings},
        instance=instance,
        run_config=run_config or {},
        raise_on_error=False,
    )


def _metadata(result, key: str) -> dict:
    mats = [m for m in result.asset_materializations_for_node(key)]
    assert len(mats) == 1, f"{key} should have been materialised once"
    return {k: v.value for k, v in mats[0].metadata.items()}


def _copy_as_new_version(registry, version: str, tmp_path: Path) -> str:
    """Register the same weights again, as a retrain with identical results would."""
    weights = registry.download_weights(version, tmp_path / f"copy-of-{version}")
    source = registry.version(version)
    with registry.run("copy", tags={"dataset_hash": source.tags["dataset_hash"]}) as run:
        run.log_artifact(weights, "weights")
    return registry.register_weights(run, tags={**source.tags, "mlflow_run_id": run.run_id})


def test_train_evaluate_gate_promote_refuse_and_rollback(
    lake, tiny_gold_manifest, registry, ci_profile, tmp_path, no_network
):
    tiny_gold = tiny_gold_manifest
    instance = DagsterInstance.ephemeral()
    everything = [detector_model, detector_evaluation, promotion_gate, champion_model]
    result = _run(everything, lake, registry, instance, {"ops": {"detector_model": {"config": {"profile": "ci"}}}})
    assert result.success

    # registry: version 1 trained on this gold dataset, promoted (no champion before, ci floor 0.0)
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("1", None)
    v1 = registry.version("1")
    assert v1.tags["dataset_hash"] == tiny_gold["dataset_hash"]
    assert v1.tags["imgsz"] == "64" and v1.tags["epochs_run"] == "2" and v1.tags["alumi.profile"] == "ci"
    assert v1.tags["git_commit"] and v1.tags["code_version"]
    assert {"metrics.val.mAP50-95", "metrics.test.mAP50-95", "gate.passed"} <= set(v1.tags)
    assert v1.tags["alumi.promoted_from"] == ""

    # MLflow run: params, per-epoch metrics, weights and plots
    client = registry.client()
    run = client.get_run(v1.run_id)
    assert run.data.params["epochs"] == "2" and run.data.params["imgsz"] == "64"
    assert run.data.params["dataset_hash"] == tiny_gold["dataset_hash"] and run.data.params["train_images"] == "16"
    assert run.data.tags["dagster_run_id"] == result.run_id
    # the gold version as the run's dataset input: its hash and its manifest's URI
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == f"gold-{tiny_gold['dataset_hash'][:12]}"
    assert dataset_input.dataset.digest == tiny_gold["dataset_hash"][:36]
    assert json.loads(dataset_input.dataset.source) == {"uri": lake.uri(f"{tiny_gold['prefix']}/manifest.parquet")}
    assert json.loads(dataset_input.dataset.profile)["train_images"] == 16
    assert [(t.key, t.value) for t in dataset_input.tags] == [("mlflow.data.context", "training")]
    assert [s for s, _ in registry.metric_history(v1.run_id, "train/box_loss")] == [1, 2]
    assert [s for s, _ in registry.metric_history(v1.run_id, "val/mAP50-95")] == [1, 2]
    assert "test/mAP50-95" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(v1.run_id, "weights")}
    artifacts |= {a.path for a in client.list_artifacts(v1.run_id, "plots")}
    assert {
        "weights/best.pt",
        "plots/BoxPR_curve.png",
        "plots/confusion_matrix.png",
        "plots/val_batch0_pred.jpg",
    } <= artifacts

    # per-epoch lines in the Dagster run log
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("epoch 1/2 train/box_loss=" in m for m in messages)
    assert any("epoch 2/2 " in m and "val/mAP50-95=" in m for m in messages)

    # evaluation: lake record, metadata with comparison table and inline plots
    evaluation = lake.read_json("models/evaluations/1.json")
    assert evaluation["dataset_hash"] == tiny_gold["dataset_hash"] and evaluation["test_images"] == 4
    assert evaluation["champion"] is None and evaluation["challenger"]["version"] == "1"
    per_class = evaluation["challenger"]["metrics"]["per_class"]
    assert {n: r["instances"] for n, r in per_class.items()} == {"scratch": 2, "dent": 2, "pit": 2}
    assert len(evaluation["challenger"]["metrics"]["confusion_matrix"]["matrix"]) == 4
    assert float(v1.tags["metrics.test.mAP50-95"]) == evaluation["challenger"]["metrics"]["map50_95"]
    meta = _metadata(result, "detector_evaluation")
    assert meta["evaluation_key"] == "models/evaluations/1.json" and meta["champion_version"] == "none"
    assert "| mAP50-95 |" in meta["comparison"] and "challenger v1" in meta["comparison"]
    assert "data:image/png;base64," in meta["plot_confusion_matrix_normalized"]
    assert lake.exists("models/evaluations/1/BoxPR_curve.png")
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("promotion_gate", True)]
    assert "no champion yet" in checks[0].metadata["why"].value
    assert _metadata(result, "champion_model")["champion_version"] == "1"
    assert _metadata(result, "detector_model")["model_version"] == "1"

    # the run-scoped working folder is gone, nothing was written to the working directory
    home = Path(os.environ["ALUMI_HOME"])
    assert not (home / "work" / result.run_id / "detector_model").exists()
    assert no_network == []

    # a challenger that must be refused: the same weights, but the gate demands a +1.0 improvement
    assert _copy_as_new_version(registry, "1", tmp_path) == "2"
    strict = {"ops": {"detector_evaluation_promotion_gate": {"config": {"tolerance": -1.0}}}}
    refused = _run([detector_evaluation, promotion_gate, champion_model], lake, registry, instance, strict)
    assert not refused.success
    (check,) = refused.get_asset_check_evaluations()
    assert not check.passed and check.metadata["why"].value.startswith("refused: challenger ")
    assert check.metadata["champion_version"].value == "1"
    assert not refused.asset_materializations_for_node("champion_model")
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("1", None)
    assert lake.read_json("models/evaluations/2.gate.json")["passed"] is False
    compared = lake.read_json("models/evaluations/2.json")
    assert compared["champion"]["version"] == "1"
    assert compared["challenger"]["metrics"]["map50_95"] == compared["champion"]["metrics"]["map50_95"]

    # champion_model alone refuses a version the gate refused
    alone = _run([champion_model], lake, registry, instance)
    assert not alone.success
    assert registry.alias_version("champion") == "1"

    # the same challenger under the default rule (equal scores) is promoted; rollback undoes it
    promoted = _run([detector_evaluation, promotion_gate, champion_model], lake, registry, instance)
    assert promoted.success
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("2", "1")
    latest = instance.get_latest_materialization_event(AssetKey("champion_model")).asset_materialization
    assert latest.metadata["previous_version"].value == "1"
    registry.rollback()
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("1", None)


def test_sweep_runs_nested_trials_and_keeps_the_best(lake, tiny_gold, registry, ci_profile):
    config = {"profile": "ci", "epochs": 1, "sweep": {"lr0": [0.01, 0.02]}}
    result = _run(
        [detector_model], lake, registry, DagsterInstance.ephemeral(), {"ops": {"detector_model": {"config": config}}}
    )
    assert result.success
    client = registry.client()
    runs = client.search_runs([client.get_experiment_by_name(registry.experiment_name).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.params["lr0"] for c in children) == ["0.01", "0.02"]
    best = parent.data.tags["alumi.best_run_id"]
    assert registry.version("1").run_id == best
    assert registry.latest_version().version == "1"
    meta = _metadata(result, "detector_model")
    assert [row["trial"] for row in meta["sweep"]] == [1, 2]
    assert meta["mlflow_run_id"] == best


CLI_DEFS = """
from dagster import Definitions, load_asset_checks_from_package_module, load_assets_from_package_module

from alumi_pipelines.assets import training
from alumi_pipelines.jobs import training_job
from alumi_pipelines.resources import build_resources

defs = Definitions(
    assets=load_assets_from_package_module(training),
    asset_checks=load_asset_checks_from_package_module(training),
    jobs=[training_job],
    resources=build_resources(),
)
"""


@pytest.mark.slow
def test_training_job_through_dagster_cli(tmp_path):
    """`dagster job execute -j training_job` with ALUMI_PROFILE=ci: exit 0, version 1 is champion."""
    from gold_factory import write_tiny_gold

    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    pointer = write_tiny_gold(Lake(base_uri=str(home / "lake")))
    defs_file = tmp_path / "training_defs.py"
    defs_file.write_text(CLI_DEFS)
    env = {
        **os.environ,
        "ALUMI_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "ALUMI_PROFILE": "ci",
        "YOLO_CONFIG_DIR": str(home / "ultralytics"),
    }
    for key in ("ALUMI_LAKE_URI", "ALUMI_MLFLOW_URI", "ALUMI_MLFLOW_ARTIFACTS", "ALUMI_GATE_FLOOR", "ALUMI_MODEL_NAME"):
        env.pop(key, None)
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "job", "execute", "-f", str(defs_file), "-j", "training_job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    registry = MlflowRegistry(
        tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}", artifact_location=str(home / "mlflow" / "artifacts")
    )
    assert registry.alias_version("champion") == "1"
    assert registry.version("1").tags["dataset_hash"] == pointer["dataset_hash"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
