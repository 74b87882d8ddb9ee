"""Defect-risk model: metrics, calibration, training on simulated days, baselines, JSON, edge scoring."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import polars as pl
import pytest

from alumi_pipelines.lib.plant.dataset import DEFECT_TYPES, DaySplit, join_outcomes, target_column, time_split
from alumi_pipelines.lib.plant.evaluation import evaluate_baselines, evaluate_risk, margins_over_baselines
from alumi_pipelines.lib.plant.features import part_features
from alumi_pipelines.lib.plant.metrics import (
    average_precision,
    brier_score,
    expected_calibration_error,
    fit_platt,
    reliability_table,
    roc_auc,
    roc_curve,
)
from alumi_pipelines.lib.plant.risk_model import (
    DEFAULT_PARAMS,
    MODEL_FORMAT,
    RiskModel,
    feature_matrix,
    model_feature_names,
    predict_risk,
    risk_for_window,
    train_risk_model,
)
from alumi_pipelines.lib.plant.samples import SIGNALS, normalise_files
from alumi_pipelines.lib.plant.sim import simulate_days

NOW = datetime(2027, 1, 1, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Signals the simulator's mechanism uses for each defect type (see lib/plant/sim.defect_intensity).
MECHANISM_SIGNALS = {
    "pit": ("melt_temp_c", "cooling_water_flow_l_min"),
    "crack": ("casting_speed_mm_s", "cooling_water_temp_c", "alloy_"),
    "scratch": ("strip_speed_m_min", "rolling_force_kn"),
    "stain": ("cooling_water_temp_c", "cooling_water_flow_l_min"),
    "dent": ("mould_level_mm", "alloy_"),
}


# ------------------------------------------------------------------------------------------ metrics


def test_roc_auc_and_average_precision_on_a_known_example():
    y, score = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, score) == pytest.approx(0.75)
    assert average_precision(y, score) == pytest.approx((1.0 + 2 / 3) / 2)
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)  # a tie counts half
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    assert average_precision(np.array([0, 0]), np.array([0.2, 0.3])) is None
    fpr, tpr = roc_curve(y, score)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_metrics_match_scikit_learn_on_random_scores_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    y = rng.random(500) < 0.2
    score = np.round(rng.random(500) + 0.3 * y, 1)  # rounding makes many ties
    assert roc_auc(y, score) == pytest.approx(metrics.roc_auc_score(y, score), abs=1e-12)
    assert average_precision(y, score) == pytest.approx(metrics.average_precision_score(y, score), abs=1e-12)


def test_reliability_table_and_brier():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    table = reliability_table(y, p, n_bins=10)
    assert [row["n"] for row in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table[1]["mean_risk"] == pytest.approx(0.135) and table[1]["observed_rate"] == 0.5
    assert table[2]["mean_risk"] is None
    assert expected_calibration_error(table) == pytest.approx((0.05 + 2 * 0.365 + 2 * 0.025) / 5)
    assert brier_score(y, p) == pytest.approx(np.mean((p - y) ** 2))


def test_platt_fit_recovers_a_known_calibration():
    rng = np.random.default_rng(0)
    margin = rng.normal(0, 2, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * margin - 1.0)))
    a, b = fit_platt(margin, y)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(-1.0, abs=0.05)
    assert fit_platt(margin[:10], np.zeros(10), fallback_offset=-2.0) == (1.0, -2.0)


# --------------------------------------------------------------------------------- trained model


@pytest.fixture(scope="module")
def data():
    plant = simulate_days(date(2026, 3, 2), 8, 150, seed=0)
    clean = normalise_files(plant.historian_files(), known_parts=plant.known_parts, now=NOW).clean
    dataset, unmatched = join_outcomes(part_features(clean), plant.outcomes)
    assert unmatched.height == 0
    split = time_split(dataset, val_days=2, test_days=2)
    return clean, dataset, split


@pytest.fixture(scope="module")
def model(data):
    _, dataset, split = data
    return train_risk_model(dataset, split)


@pytest.fixture(scope="module")
def evaluation(model, data):
    _, dataset, split = data
    return evaluate_risk(model, split.rows(dataset, "test"))


def test_model_beats_majority_and_single_threshold_baselines_on_hold_out_days(data, evaluation):
    _, dataset, split = data
    baselines = evaluate_baselines(dataset, split)
    margins = margins_over_baselines(evaluation, baselines)
    assert baselines["majority"]["macro"]["roc_auc"] == 0.5
    assert margins["pr_auc_vs_majority"] > 0.35, margins
    assert margins["pr_auc_vs_threshold_rule"] > 0.15, margins
    assert margins["roc_auc_vs_threshold_rule"] > 0.08, margins
    rule_pr = baselines["threshold_rule"]["per_type"]
    better = [t for t in DEFECT_TYPES if evaluation["per_type"][t]["pr_auc"] > rule_pr[t]["pr_auc"]]
    assert better == list(DEFECT_TYPES)
    assert evaluation["macro"]["roc_auc"] > 0.8
    # The hold-out days are cool: about half of their stains come from the base rate, so stain is weakest.
    assert all(evaluation["per_type"][t]["roc_auc"] > 0.65 for t in DEFECT_TYPES)


def test_training_is_deterministic_and_records_how_it_was_trained(model, data):
    _, dataset, split = data
    assert train_risk_model(dataset, split).to_json_bytes() == model.to_json_bytes()
    facts = model.info["per_type"]
    assert model.info["split"] == split.to_dict()
    for t in DEFECT_TYPES:
        train_rows = split.rows(dataset, "train")
        positives = int(train_rows[target_column(t)].sum())
        assert facts[t]["train_positives"] == positives
        assert facts[t]["scale_pos_weight"] == pytest.approx((train_rows.height - positives) / positives)
        assert model.boosters[t].num_boosted_rounds() == facts[t]["best_iteration"] + 1  # trimmed to the best round
        assert facts[t]["best_iteration"] < DEFAULT_PARAMS["num_boost_round"] - 1  # early stopping happened


def test_json_round_trip_predicts_identically(model, data):
    _, dataset, split = data
    blob = model.to_json_bytes()
    document = json.loads(blob)
    assert document["format"] == MODEL_FORMAT and set(document["boosters"]) == set(DEFECT_TYPES)
    assert "learner" in document["boosters"]["pit"]  # each booster in XGBoost's own JSON model format
    loaded = RiskModel.from_json_bytes(blob)
    test = split.rows(dataset, "test")
    before, after = predict_risk(model, test), predict_risk(loaded, test)
    assert before.columns == ["part_id", "day", *(f"risk_{t}" for t in DEFECT_TYPES)]
    assert before.equals(after)
    assert loaded.to_json_bytes() == RiskModel.from_json_bytes(loaded.to_json_bytes()).to_json_bytes()
    with pytest.raises(ValueError, match="'format' must be"):
        RiskModel.from_json_bytes(b'{"format": "other"}')


def test_risk_for_window_matches_the_batch_prediction(model, data):
    clean, dataset, split = data
    test = split.rows(dataset, "test").head(4)
    batch = predict_risk(model, test)
    for part_id in test["part_id"]:
        samples = clean.filter(pl.col("part_id") == part_id)
        as_json = {
            "timestamp": samples["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S%:z").to_list(),
            "alloy": samples["alloy"][0],
            **{s: samples[s].to_list() for s in SIGNALS},
        }
        expected = batch.filter(pl.col("part_id") == part_id).row(0, named=True)
        for window in (as_json, samples):
            risk = risk_for_window(model, window)
            assert list(risk) == list(DEFECT_TYPES)
            for t in DEFECT_TYPES:
                assert risk[t] == pytest.approx(expected[f"risk_{t}"], rel=1e-9, abs=1e-12)


def test_evaluation_reports_calibration_contributions_and_plots(model, data, evaluation):
    _, dataset, split = data
    test = split.rows(dataset, "test")
    assert evaluation["n_parts"] == test.height
    for t in DEFECT_TYPES:
        metrics = evaluation["per_type"][t]
        assert metrics["positives"] == int(test[target_column(t)].sum())
        assert sum(row["n"] for row in metrics["reliability"]) == test.height
        assert 0 <= metrics["brier"] < metrics["prevalence"] * (1 - metrics["prevalence"])  # better than the base rate
        assert metrics["ece"] < 0.1
        contributions = list(metrics["mean_abs_contribution"].items())
        assert len(contributions) == len(model.feature_names)
        assert [v for _, v in contributions] == sorted((v for _, v in contributions), reverse=True)
        top3 = [name for name, _ in contributions[:3]]
        assert any(name.startswith(MECHANISM_SIGNALS[t]) for name in top3), (t, top3)
    json.dumps({k: v for k, v in evaluation.items() if k != "plots"})
    assert set(evaluation["plots"]) == {"roc", "reliability", "contributions"}
    assert all(png.startswith(PNG_MAGIC) and len(png) > 10_000 for png in evaluation["plots"].values())


def test_contributions_add_up_to_the_margin(model, data):
    _, dataset, split = data
    matrix = feature_matrix(split.rows(dataset, "test").head(20), model.feature_names)
    import xgboost as xgb

    dmatrix = xgb.DMatrix(matrix, feature_names=list(model.feature_names), missing=np.nan)
    for t, contributions in model.contributions(matrix).items():
        margin = model.boosters[t].predict(dmatrix, output_margin=True)
        np.testing.assert_allclose(contributions.sum(axis=1), margin, rtol=1e-4, atol=1e-4)


def test_training_refuses_bad_arguments(data):
    _, dataset, split = data
    with pytest.raises(ValueError, match="unknown param"):
        train_risk_model(dataset, split, {"max_dpeth": 3})
    no_val = DaySplit(split.train_days, (date(1999, 1, 1),), split.test_days)
    with pytest.raises(ValueError, match="0 validation rows"):
        train_risk_model(dataset, no_val)
    with pytest.raises(KeyError, match="'melt_temp_c__mean'"):
        feature_matrix(dataset.drop("melt_temp_c__mean"), model_feature_names())
