"""The whole plant branch through `materialize`: simulated days → raw → features → dataset → model → gate →
champion.

One module-scoped run on 6 simulated days of 90 parts; later tests re-run the model stages to drive the
champion gate both ways.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from plant_support import (
    DAYS,
    PARTS_PER_DAY,
    SEED,
    check_results,
    make_registry,
    materialized,
    metadata,
    plant_definitions,
    run_branch,
    start_day,
)

from alumi_pipelines.assets.plant.risk_dataset import read_risk_dataset
from alumi_pipelines.assets.plant.risk_model import risk_registry
from alumi_pipelines.assets.plant.sensor_raw import landing_days, write_plant_demo
from alumi_pipelines.resources import lake_keys

ALL_ASSETS = [
    "defect_risk_champion",
    "defect_risk_dataset",
    "defect_risk_evaluation",
    "defect_risk_model",
    "plant_feature_drift",
    "plant_sensor_features",
    "plant_sensor_raw",
]
MODEL_STAGES = ["defect_risk_model", "defect_risk_evaluation", "defect_risk_champion"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def branch(tmp_path_factory, mlflow_template_db):
    from dagster import DagsterInstance

    from alumi_pipelines.lib.plant.sim import simulate_days
    from alumi_pipelines.resources.lake import Lake

    root = tmp_path_factory.mktemp("branch")
    lake = Lake(base_uri=str(root / "lake"))
    start = start_day()
    write_plant_demo(lake, start, DAYS, PARTS_PER_DAY, SEED)
    registry = make_registry(root, mlflow_template_db)
    instance = DagsterInstance.ephemeral()
    days = landing_days(lake)
    result = run_branch(lake, registry, instance, days)
    return SimpleNamespace(
        lake=lake,
        registry=registry,
        risk=risk_registry(registry),
        instance=instance,
        days=days,
        result=result,
        plant=simulate_days(start, DAYS, PARTS_PER_DAY, SEED),
    )


def test_every_asset_materialises_and_every_check_passes(branch):
    assert branch.result.success
    assert materialized(branch.result) == ALL_ASSETS
    checks = check_results(branch.result)
    assert sorted(checks) == [
        "plant_feature_drift_ok",
        "plant_features_valid",
        "plant_samples_valid",
        "plant_sensor_quarantine",
        "risk_dataset_splits",
        "risk_dataset_unmatched",
        "risk_promotion_gate",
    ]
    assert all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items() if not c.passed}
    raw = metadata(branch.result, "plant_sensor_raw")
    assert raw["files"] == 3 * DAYS and raw["refused_files"] == 0 and raw["rejected_rows"] == 0
    assert raw["samples"] == branch.plant.samples.height and raw["parts"] == DAYS * PARTS_PER_DAY


def test_raw_and_features_keep_every_simulated_sample_and_part(branch):
    from alumi_pipelines.lib.plant.samples import SIGNALS

    plan = branch.plant.parts
    for day in branch.days:
        raw = branch.lake.read_table(lake_keys.raw_plant_key(day))
        expected = branch.plant.samples.filter(pl.col("timestamp").dt.date().cast(pl.Utf8) == day)
        assert raw.height == expected.height
        expected = expected.sort("part_id", "timestamp")
        assert raw["timestamp"].equals(expected["timestamp"]) and raw["part_id"].equals(expected["part_id"])
        # the historian writes 4 decimals in its own units (strip speed in m/s: 60 * 0.5e-4 m/min)
        assert np.allclose(
            raw.select(SIGNALS).to_numpy(),
            expected.select(SIGNALS).to_numpy(),
            rtol=0,
            atol=3.1e-3,
            equal_nan=True,
        )
        features = branch.lake.read_table(lake_keys.plant_features_key(day))
        day_plan = plan.filter(pl.col("day").cast(pl.Utf8) == day).select("part_id", "n_samples").sort("part_id")
        assert features.select("part_id", "n_samples").equals(day_plan)
        assert branch.lake.read_table(lake_keys.plant_rejects_key(day)).height == 0


def test_dataset_joins_outcomes_and_splits_by_day(branch):
    from alumi_pipelines.lib.plant.dataset import DEFECT_TYPES, count_column, target_column

    dataset, split = read_risk_dataset(branch.lake)
    assert dataset.height == DAYS * PARTS_PER_DAY
    assert [d.isoformat() for d in split.train_days] == branch.days[:4]
    assert [d.isoformat() for d in split.val_days] == [branch.days[4]]
    assert [d.isoformat() for d in split.test_days] == [branch.days[5]]
    assert dataset.group_by("split").len().sort("split").rows() == [("test", 90), ("train", 360), ("val", 90)]
    outcomes = branch.plant.outcomes.sort("part_id")
    joined = dataset.sort("part_id")
    for t in DEFECT_TYPES:
        assert joined[count_column(t)].to_list() == outcomes[count_column(t)].to_list()
        assert joined[target_column(t)].to_list() == (outcomes[count_column(t)] > 0).cast(pl.Int8).to_list()
    meta = metadata(branch.result, "defect_risk_dataset")
    assert meta["unmatched_parts"] == 0 and meta["unknown_part_ids"] == 0
    assert meta["train_parts"] == 360 and meta["test_parts"] == 90
    assert "no part_id" in meta["vision_outcomes"]


def test_model_is_logged_and_registered_in_mlflow(branch, tmp_path):
    from alumi_pipelines.lib.plant.risk_model import RiskModel

    info = branch.risk.version("1")
    meta = metadata(branch.result, "defect_risk_model")
    assert meta["model_version"] == "1" and info.run_id == meta["mlflow_run_id"]
    dataset_meta = metadata(branch.result, "defect_risk_dataset")
    assert info.tags["dataset_hash"] == meta["dataset_hash"] == dataset_meta["dataset_hash"]
    run = branch.risk.client().get_run(info.run_id)
    assert run.data.params["max_depth"] == "4" and run.data.params["train_parts"] == "360"
    assert run.data.metrics["val/pr_auc_macro"] == pytest.approx(meta["val_pr_auc_macro"])
    evaluation_meta = metadata(branch.result, "defect_risk_evaluation")
    assert run.data.metrics["test/pr_auc_macro"] == pytest.approx(evaluation_meta["pr_auc_macro"])
    assert branch.risk.client().get_experiment(run.info.experiment_id).name == "alumi-defect-risk"
    logged = branch.risk.download_uri(f"{info.source}/{lake_keys.RISK_MODEL_FILE}", tmp_path).read_bytes()
    assert logged == branch.lake.read_bytes(lake_keys.risk_version_key("1"))
    model = RiskModel.from_json_bytes(logged)
    assert set(model.boosters) == {"scratch", "dent", "pit", "crack", "stain"}
    for t, facts in model.info["per_type"].items():
        assert model.boosters[t].num_boosted_rounds() == facts["best_iteration"] + 1  # early stopping trimmed it
        negatives = facts["train_parts"] - facts["train_positives"]
        assert facts["scale_pos_weight"] == pytest.approx(negatives / facts["train_positives"])


def test_evaluation_beats_both_baselines_and_shows_plots(branch):
    record = branch.lake.read_json(lake_keys.risk_evaluation_key("1"))
    assert record["test_parts"] == 90 and record["champion"] is None
    margins = record["margins"]
    assert all(v >= 0.05 for v in margins.values()), margins
    macro = record["challenger"]["metrics"]["macro"]
    majority = record["baselines"]["majority"]["macro"]["pr_auc"]
    assert macro["pr_auc"] == pytest.approx(majority + margins["pr_auc_vs_majority"])
    assert macro["roc_auc"] > 0.75
    per_type = record["challenger"]["metrics"]["per_type"]
    assert sum(row["n"] for row in per_type["scratch"]["reliability"]) == 90
    contributions = per_type["scratch"]["mean_abs_contribution"]
    top = max(contributions, key=contributions.get)
    assert top.split("__")[0] in ("strip_speed_m_min", "rolling_force_kn")  # the simulator's scratch mechanism
    meta = metadata(branch.result, "defect_risk_evaluation")
    for name in ("plot_roc", "plot_calibration", "plot_contributions"):
        encoded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", meta[name]).group(1)
        assert base64.b64decode(encoded).startswith(PNG_MAGIC)
    assert branch.lake.read_bytes(lake_keys.risk_plot_key("1", "roc")).startswith(PNG_MAGIC)
    verdict = branch.lake.read_json(lake_keys.risk_gate_key("1"))
    assert verdict["passed"] and verdict["reasons"] == []


def test_champion_alias_and_edge_file(branch):
    from alumi_pipelines.lib.plant.risk_model import RiskModel, predict_risk

    assert branch.risk.alias_version("champion") == "1"
    data = branch.lake.read_bytes(lake_keys.RISK_CHAMPION_KEY)
    document = json.loads(data)
    assert document["info"]["registry"] == {"model_name": "alumi-defect-risk", "version": "1"}
    pointer = branch.lake.read_json(lake_keys.RISK_CHAMPION_POINTER)
    import hashlib

    assert pointer["sha256"] == hashlib.sha256(data).hexdigest() and pointer["version"] == "1"
    dataset, split = read_risk_dataset(branch.lake)
    test = split.rows(dataset, "test")
    published = predict_risk(RiskModel.from_json_bytes(data), test)
    version_bytes = branch.lake.read_bytes(lake_keys.risk_version_key("1"))
    registered = predict_risk(RiskModel.from_json_bytes(version_bytes), test)
    assert published.equals(registered)


def test_drift_report_is_written_for_the_drift_sensor(branch):
    latest = branch.lake.read_json(lake_keys.PLANT_DRIFT_LATEST)
    meta = metadata(branch.result, "plant_feature_drift")
    assert {"report_id", "passed", "drift_share"} <= set(latest)
    assert latest["report_id"] == meta["report_id"] and latest["passed"] is True
    assert latest["drift_share"] == pytest.approx(meta["drift_share"]) and latest["drift_share"] < 0.5
    assert latest["current_days"] == [branch.days[-1]] and latest["reference_days"] == branch.days[:-1]
    assert len(latest["columns"]) == 14
    assert branch.lake.read_bytes(latest["html"]).lstrip().lower().startswith(b"<!doctype html")


def test_gate_refuses_a_challenger_that_does_not_beat_the_champion_then_accepts_an_equal_one(branch):
    stricter = {"ops": {"defect_risk_evaluation_risk_promotion_gate": {"config": {"tolerance": -0.01}}}}
    refused = run_branch(
        branch.lake, branch.registry, branch.instance, None, selection=MODEL_STAGES, run_config=stricter
    )
    assert not refused.success
    assert materialized(refused) == ["defect_risk_evaluation", "defect_risk_model"]
    gate = check_results(refused)["risk_promotion_gate"]
    assert not gate.passed
    verdict = branch.lake.read_json(lake_keys.risk_gate_key("2"))
    assert not verdict["passed"] and verdict["champion_version"] == "1"
    assert [r.split(":")[0] for r in verdict["reasons"]] == ["vs_champion"]
    assert "delta +0.0000" in verdict["reasons"][0]  # same data, same seed: the same model, which is not better
    assert branch.risk.alias_version("champion") == "1"
    assert json.loads(branch.lake.read_bytes(lake_keys.RISK_CHAMPION_KEY))["info"]["registry"]["version"] == "1"

    # what the drift sensor requests: the unpartitioned retraining job, no days named
    from dagster import Definitions

    from alumi_pipelines.jobs import plant_retraining_job, plant_risk_job

    assets, checks = plant_definitions()
    defs = Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[plant_risk_job, plant_retraining_job],
        resources={"lake": branch.lake, "mlflow": branch.registry},
    )
    accepted = defs.resolve_job_def("plant_retraining_job").execute_in_process(
        instance=branch.instance, raise_on_error=False
    )
    assert accepted.success, check_results(accepted)["risk_promotion_gate"].metadata
    assert materialized(accepted) == [
        "defect_risk_champion",
        "defect_risk_dataset",
        "defect_risk_evaluation",
        "defect_risk_model",
    ]
    champion = metadata(accepted, "defect_risk_champion")
    assert champion["champion_version"] == "3" and champion["previous_version"] == "1"
    assert branch.risk.alias_version("previous") == "1"
    record = branch.lake.read_json(lake_keys.risk_evaluation_key("3"))
    assert record["champion"]["version"] == "1"
    champion_pr_auc = record["champion"]["metrics"]["macro"]["pr_auc"]
    assert record["challenger"]["metrics"]["macro"]["pr_auc"] == pytest.approx(champion_pr_auc)
    assert json.loads(branch.lake.read_bytes(lake_keys.RISK_CHAMPION_KEY))["info"]["registry"]["version"] == "3"


def test_gate_refuses_a_model_of_outcomes_that_carry_no_signal(tmp_path, mlflow_template_db):
    """Outcomes shuffled across parts: no model can beat the baselines, so no champion is named."""
    from dagster import DagsterInstance

    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(tmp_path / "lake"))
    write_plant_demo(lake, start_day(4), 4, 60, seed=1)
    days = landing_days(lake)
    rng = np.random.default_rng(0)
    for day in days:
        key = lake_keys.plant_landing_key(day, lake_keys.OUTCOMES_FILE)
        outcomes = pl.read_csv(lake.read_bytes(key))
        counts = [c for c in outcomes.columns if c.startswith("n_")]
        shuffled = outcomes.with_columns(pl.col(c).gather(rng.permutation(outcomes.height)) for c in counts)
        lake.write_bytes(key, shuffled.write_csv().encode())
    registry = make_registry(tmp_path, mlflow_template_db)
    result = run_branch(
        lake,
        registry,
        DagsterInstance.ephemeral(),
        days,
        selection=[a for a in ALL_ASSETS if a != "plant_feature_drift"],
    )
    assert not result.success
    assert "defect_risk_champion" not in materialized(result)
    verdict = lake.read_json(lake_keys.risk_gate_key("1"))
    assert not verdict["passed"]
    assert {r.split(":")[0] for r in verdict["reasons"]} & {
        "pr_auc_vs_threshold_rule",
        "roc_auc_vs_threshold_rule",
        "pr_auc_vs_majority",
        "roc_auc_vs_majority",
    }
    assert risk_registry(registry).alias_version("champion") is None
    assert not lake.exists(lake_keys.RISK_CHAMPION_KEY)


def test_a_drifted_day_fails_the_drift_check_and_tells_the_drift_sensor(branch, tmp_path):
    from dagster import DagsterInstance

    from alumi_pipelines.lib.plant.samples import SIGNALS
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(tmp_path / "lake"))
    for day in branch.days:
        lake.write_bytes(lake_keys.plant_features_key(day), branch.lake.read_bytes(lake_keys.plant_features_key(day)))
    lake.write_bytes(lake_keys.RISK_CHAMPION_KEY, branch.lake.read_bytes(lake_keys.RISK_CHAMPION_KEY))
    new_day = (dt.date.fromisoformat(branch.days[-1]) + dt.timedelta(days=1)).isoformat()
    last = lake.read_table(lake_keys.plant_features_key(branch.days[-1]))
    # recalibrated sensors and a hotter process: every level 15% up, every spread three times wider
    drifted = last.with_columns(
        pl.col("part_id").str.replace(r"-\d{8}-", "-NEWDAY-"),
        pl.lit(dt.date.fromisoformat(new_day)).alias("day"),
        *[(pl.col(f"{s}__mean") * 1.15) for s in SIGNALS],
        *[(pl.col(f"{s}__std") * 3) for s in SIGNALS],
    )
    lake.write_table(lake_keys.plant_features_key(new_day), drifted)
    result = run_branch(lake, None, DagsterInstance.ephemeral(), None, selection=["plant_feature_drift"])
    assert result.success  # drift warns, it does not fail the run: the drift sensor acts on it
    check = check_results(result)["plant_feature_drift_ok"]
    assert not check.passed and check.severity.value == "WARN"
    latest = lake.read_json(lake_keys.PLANT_DRIFT_LATEST)
    assert latest["passed"] is False and latest["drift_share"] >= 0.5
    assert latest["report_id"] == metadata(result, "plant_feature_drift")["report_id"]
    assert latest["current_days"] == [new_day]
    assert latest["reference_source"] == "champion training days" and latest["reference_days"] == branch.days[:5]
