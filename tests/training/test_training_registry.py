"""The MLflow registry resource against a real (SQLite) MLflow: runs, versions, gate-driven promotion, rollback."""

from __future__ import annotations

import pytest

from alumi_pipelines.lib.training.gate import GateRule, decide
from alumi_pipelines.resources.mlflow_registry import RegistryError


def register(registry, tmp_path, payload: bytes, **tags) -> str:
    """A run whose weights/best.pt holds ``payload``, registered as a new version."""
    weights = tmp_path / f"best-{payload.hex()}" / "best.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(payload)
    with registry.run("unit", tags={"dataset_hash": "abc"}) as run:
        run.log_params({"epochs": 1, "imgsz": 64})
        run.log_metrics({"val/mAP50": 0.1}, step=1)
        run.log_metrics({"val/mAP50": 0.2}, step=2)
        run.log_artifact(weights, "weights")
    return registry.register_weights(run, tags={"dataset_hash": "abc", **tags})


def evaluation(map50_95: float, recall: float) -> dict:
    return {"map50_95": map50_95, "per_class": {"dent": {"instances": 4, "recall": recall}}}


def gate_then_promote(registry, version: str, challenger: dict, champion: dict | None) -> bool:
    """What the gate check + champion_model do: promote only when the rule passes."""
    decision = decide(challenger, champion, GateRule(tolerance=0.01, recall_margin=0.05, floor=0.1))
    if decision.passed:
        registry.promote(version)
    return decision.passed


def test_runs_versions_and_weights_round_trip(registry, tmp_path):
    v1 = register(registry, tmp_path, b"weights-one", git_commit="c0ffee")
    v2 = register(registry, tmp_path, b"weights-two")
    assert (v1, v2) == ("1", "2")
    info = registry.version(v1)
    assert info.tags["dataset_hash"] == "abc" and info.tags["git_commit"] == "c0ffee"
    assert [h for h in registry.metric_history(info.run_id, "val/mAP50")] == [(1, 0.1), (2, 0.2)]
    assert registry.latest_version().version == "2"
    assert registry.download_weights(v2, tmp_path / "dl").read_bytes() == b"weights-two"
    assert registry.download_uri(f"runs:/{info.run_id}/weights", tmp_path / "dl2").read_bytes() == b"weights-one"
    with pytest.raises(RegistryError, match="model 'alumi-detector-test' has no version '9'"):
        registry.version(9)


def test_gate_promotes_a_good_challenger_and_refuses_a_bad_one(registry, tmp_path):
    v1, v2, v3 = (register(registry, tmp_path, p) for p in (b"one", b"two", b"three"))
    assert registry.alias_version("champion") is None

    assert gate_then_promote(registry, v1, evaluation(0.40, 0.8), None)  # floor 0.1
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("1", None)

    assert gate_then_promote(registry, v2, evaluation(0.395, 0.78), evaluation(0.40, 0.8))  # within tolerance
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("2", "1")

    assert not gate_then_promote(registry, v3, evaluation(0.45, 0.60), evaluation(0.395, 0.78))  # recall drop
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("2", "1")
    assert registry.version(v2).tags["alumi.promoted_from"] == "1"


def test_promote_same_version_is_a_no_op(registry, tmp_path):
    v1 = register(registry, tmp_path, b"one")
    assert registry.promote(v1).changed
    move = registry.promote(v1)
    assert (move.changed, move.champion, move.previous) == (False, "1", None)


def test_rollback_walks_back_through_promotions(registry, tmp_path):
    for payload in (b"one", b"two", b"three"):
        registry.promote(register(registry, tmp_path, payload))
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("3", "2")

    move = registry.rollback()
    assert (move.champion, move.previous) == ("2", "1")
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("2", "1")
    assert "alumi.rolled_back_at" in registry.version("3").tags

    registry.rollback()
    assert (registry.alias_version("champion"), registry.alias_version("previous")) == ("1", None)
    with pytest.raises(RegistryError, match="has no 'previous' version to roll back to \\(champion is 1\\)"):
        registry.rollback()


def test_cli_functions_use_settings(registry, tmp_path, monkeypatch):
    from alumi_pipelines.resources import mlflow_registry

    register(registry, tmp_path, b"one")
    register(registry, tmp_path, b"two")
    monkeypatch.setenv("ALUMI_MLFLOW_URI", registry.tracking_uri)
    monkeypatch.setenv("ALUMI_MLFLOW_ARTIFACTS", registry.artifact_location)
    monkeypatch.setenv("ALUMI_MODEL_NAME", registry.model_name)
    assert mlflow_registry.promote(version="1") == {
        "model_name": "alumi-detector-test",
        "champion": "1",
        "previous": None,
        "changed": True,
    }
    assert mlflow_registry.promote(registry.model_name, "2")["previous"] == "1"
    assert mlflow_registry.rollback() == {
        "model_name": "alumi-detector-test",
        "champion": "1",
        "previous": None,
        "changed": True,
    }
    with pytest.raises(RegistryError, match="no 'previous' version"):
        mlflow_registry.rollback(registry.model_name)
    with pytest.raises(RegistryError, match="has no version '7'"):
        mlflow_registry.promote(version="7")


def test_nested_runs_record_their_parent(registry):
    with registry.run("sweep") as parent:
        with registry.run("trial-1", parent_run_id=parent.run_id) as child:
            child.log_metrics({"val/mAP50-95": 0.3}, step=1)
    run = registry.client().get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.info.status == "FINISHED"


def test_failed_block_marks_the_run_failed(registry):
    with pytest.raises(RuntimeError):
        with registry.run("boom") as run:
            raise RuntimeError("boom")
    assert registry.client().get_run(run.run_id).info.status == "FAILED"
