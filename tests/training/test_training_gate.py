"""The promotion rule on its own (pure) and the gate rule's sources (config, env, profile)."""

from __future__ import annotations

import pytest

from alumi_pipelines.lib.training.gate import GateRule, decide, rule_for_profile


def evaluation(map50_95: float, recalls: dict[str, float | None]) -> dict:
    return {
        "map50_95": map50_95,
        "per_class": {name: {"instances": 0 if r is None else 5, "recall": r} for name, r in recalls.items()},
    }


RULE = GateRule(tolerance=0.02, recall_margin=0.05, floor=0.3)


def test_no_champion_passes_at_or_above_floor():
    decision = decide(evaluation(0.30, {"dent": 0.5}), None, RULE)
    assert decision.passed and decision.reasons == []
    assert "no champion yet: challenger mAP50-95 0.3000 >= floor 0.3000" in decision.summary()


def test_no_champion_below_floor_is_refused_with_reason():
    decision = decide(evaluation(0.29, {"dent": 0.5}), None, RULE)
    assert not decision.passed
    assert decision.reasons == ["no champion yet: challenger mAP50-95 0.2900 < floor 0.3000"]


def test_challenger_within_tolerance_passes():
    champion = evaluation(0.50, {"dent": 0.8, "pit": 0.7})
    decision = decide(evaluation(0.481, {"dent": 0.78, "pit": 0.66}), champion, RULE)
    assert decision.passed, decision.reasons
    assert [c["name"] for c in decision.criteria] == ["mAP50-95 vs champion", "per-class recall"]


def test_challenger_below_tolerance_is_refused():
    champion = evaluation(0.50, {"dent": 0.8})
    decision = decide(evaluation(0.47, {"dent": 0.9}), champion, RULE)
    assert not decision.passed
    assert decision.reasons == ["challenger 0.4700 < champion 0.5000 - tolerance 0.0200 = 0.4800"]


def test_one_class_recall_drop_refuses_even_with_better_map():
    champion = evaluation(0.50, {"dent": 0.80, "pit": 0.70, "scratch": 0.6})
    decision = decide(evaluation(0.60, {"dent": 0.95, "pit": 0.60, "scratch": 0.58}), champion, RULE)
    assert not decision.passed
    assert len(decision.reasons) == 1
    assert "pit 0.700 -> 0.600 (drop 0.100)" in decision.reasons[0]
    assert "scratch" not in decision.reasons[0]  # a 0.02 drop is inside the margin


def test_class_the_champion_never_saw_is_ignored_and_missing_recall_counts_as_zero():
    champion = evaluation(0.5, {"dent": None, "pit": 0.4})
    assert decide(evaluation(0.5, {"dent": 0.1, "pit": 0.4}), champion, RULE).passed
    lost = decide(evaluation(0.5, {"dent": 0.1, "pit": None}), champion, RULE)
    assert not lost.passed and "pit 0.400 -> 0.000" in lost.reasons[0]


def test_negative_tolerance_demands_an_improvement():
    strict = GateRule(tolerance=-0.05, recall_margin=0.05, floor=0.0)
    champion = evaluation(0.40, {"dent": 0.5})
    assert not decide(evaluation(0.44, {"dent": 0.5}), champion, strict).passed
    assert decide(evaluation(0.45, {"dent": 0.5}), champion, strict).passed


def test_nan_metrics_are_refused():
    decision = decide({"map50_95": float("nan"), "per_class": {}}, None, RULE)
    assert not decision.passed and "no finite map50_95" in decision.reasons[0]


def test_markdown_lists_each_criterion():
    md = decide(evaluation(0.2, {"dent": 0.5}), evaluation(0.5, {"dent": 0.5}), RULE).markdown()
    assert "| mAP50-95 vs champion | FAIL |" in md and "| per-class recall | pass |" in md


def test_profile_floors_and_overrides():
    assert rule_for_profile("ci").floor == 0.0
    assert rule_for_profile("cpu").floor == 0.1
    assert rule_for_profile("gpu", floor=0.4, tolerance=0.0).floor == 0.4
    with pytest.raises(ValueError, match="floor=1.5: must be in"):
        GateRule(floor=1.5)
    with pytest.raises(ValueError, match="recall_margin=-0.1: must be >= 0"):
        GateRule(recall_margin=-0.1)


def test_gate_floor_from_config_then_env_then_profile(monkeypatch):
    from alumi_pipelines.assets.training.evaluation import PromotionGateConfig, gate_rule
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import Settings

    def settings() -> PipelineSettings:
        return PipelineSettings.from_settings(Settings.from_env())

    monkeypatch.setenv("ALUMI_PROFILE", "cpu")
    monkeypatch.delenv("ALUMI_GATE_FLOOR", raising=False)
    assert gate_rule(PromotionGateConfig(), settings()).floor == 0.1
    monkeypatch.setenv("ALUMI_GATE_FLOOR", "0.05")
    assert gate_rule(PromotionGateConfig(), settings()).floor == 0.05
    assert gate_rule(PromotionGateConfig(floor=0.2), settings()).floor == 0.2
    monkeypatch.setenv("ALUMI_GATE_FLOOR", "high")
    with pytest.raises(ValueError, match="ALUMI_GATE_FLOOR='high': must be a number"):
        Settings.from_env()


def test_champion_needs_a_passing_verdict_of_the_latest_evaluation(tmp_path):
    from dagster import Failure

    from alumi_pipelines.assets.promotion import passing_verdict
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(tmp_path))
    evaluation = {"dagster_run_id": "run-2"}
    args = {"model": "version 3", "check": "promotion_gate", "evaluated": "detector_evaluation"}
    with pytest.raises(Failure, match=r"version 3 has no promotion_gate verdict \(models/v3.gate.json\)"):
        passing_verdict(lake, "models/v3.gate.json", evaluation, **args)
    lake.write_json("models/v3.gate.json", {"evaluation_run_id": "run-1", "passed": True, "reasons": []})
    with pytest.raises(Failure, match="belongs to an older evaluation"):
        passing_verdict(lake, "models/v3.gate.json", evaluation, **args)
    lake.write_json("models/v3.gate.json", {"evaluation_run_id": "run-2", "passed": False, "reasons": ["floor: 0.05"]})
    with pytest.raises(Failure, match="version 3 did not pass promotion_gate: floor: 0.05"):
        passing_verdict(lake, "models/v3.gate.json", evaluation, **args)
    lake.write_json("models/v3.gate.json", {"evaluation_run_id": "run-2", "passed": True, "reasons": []})
    assert passing_verdict(lake, "models/v3.gate.json", evaluation, **args)["passed"] is True
