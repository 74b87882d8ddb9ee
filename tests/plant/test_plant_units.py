"""Small pieces of the plant branch: the gate rule, quality suites, lake layout helpers, the demo writer."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from alumi_pipelines.assets.plant.sensor_raw import (
    partition_range_tags,
    plant_days_tags,
    reason_pattern,
    write_plant_demo,
)
from alumi_pipelines.lib.plant.risk_gate import RiskGateRule, decide_risk_promotion
from alumi_pipelines.resources import lake_keys

GOOD_MARGINS = {
    "pr_auc_vs_majority": 0.40,
    "pr_auc_vs_threshold_rule": 0.20,
    "roc_auc_vs_majority": 0.35,
    "roc_auc_vs_threshold_rule": 0.15,
}


def test_gate_passes_a_first_model_that_beats_both_baselines():
    decision = decide_risk_promotion(GOOD_MARGINS, {"pr_auc": 0.55}, None, RiskGateRule())
    assert decision.passed and decision.reasons == []
    assert [c["name"] for c in decision.criteria] == [*GOOD_MARGINS, "champion"]


@pytest.mark.parametrize(
    "margins, champion, rule, failed",
    [
        ({**GOOD_MARGINS, "roc_auc_vs_threshold_rule": 0.049}, None, RiskGateRule(), ["roc_auc_vs_threshold_rule"]),
        ({**GOOD_MARGINS, "pr_auc_vs_majority": None}, None, RiskGateRule(), ["pr_auc_vs_majority"]),
        (GOOD_MARGINS, {"pr_auc": 0.561}, RiskGateRule(tolerance=0.01), ["vs_champion"]),
        (GOOD_MARGINS, {"pr_auc": 0.55}, RiskGateRule(tolerance=-0.01), ["vs_champion"]),
        (GOOD_MARGINS, {"pr_auc": None}, RiskGateRule(), ["vs_champion"]),
        (
            GOOD_MARGINS,
            None,
            RiskGateRule(baseline_margin=0.3),
            ["pr_auc_vs_threshold_rule", "roc_auc_vs_threshold_rule"],
        ),
    ],
)
def test_gate_refuses_with_the_failed_criteria_named(margins, champion, rule, failed):
    decision = decide_risk_promotion(margins, {"pr_auc": 0.55}, champion, rule)
    assert not decision.passed
    assert [r.split(":")[0] for r in decision.reasons] == failed


def test_gate_allows_a_challenger_within_the_tolerance_of_the_champion():
    decision = decide_risk_promotion(GOOD_MARGINS, {"pr_auc": 0.545}, {"pr_auc": 0.55}, RiskGateRule(tolerance=0.01))
    assert decision.passed
    assert "delta -0.0050" in decision.criteria[-1]["detail"]


def test_gate_rule_refuses_non_numbers():
    with pytest.raises(ValueError, match="tolerance=nan"):
        RiskGateRule(tolerance=float("nan"))


def _samples(timestamps: list[str], part_ids: list[str], alloy: str = "6063"):
    from alumi_pipelines.lib.plant.samples import LIMITS, SIGNALS

    n = len(timestamps)
    return pl.DataFrame(
        {
            "timestamp": pl.Series(timestamps).str.to_datetime(time_zone="UTC", time_unit="us"),
            "part_id": part_ids,
            "line": ["L1"] * n,
            "alloy": [alloy] * n,
            "shift": ["A"] * n,
            **{s: [sum(LIMITS[s]) / 2] * n for s in SIGNALS},
            "source_file": ["f.csv"] * n,
        }
    )


def test_sample_suite_passes_clean_rows_and_names_broken_rules():
    from alumi_pipelines.lib.plant.quality import validate_plant_samples

    good = _samples(["2026-03-02T00:00:00Z", "2026-03-02T00:00:01Z", "2026-03-02T00:00:00Z"], ["a", "a", "b"])
    result = validate_plant_samples(good)
    assert result.success, result.summary()
    repeated = _samples(
        ["2026-03-02T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-02T00:00:01Z"], ["a", "a", "a"], alloy="7075"
    )
    result = validate_plant_samples(repeated)
    assert not result.success
    failed = {(f["expectation"], f["column"]) for f in result.failures}
    assert failed == {
        ("expect_compound_columns_to_be_unique", ""),
        ("expect_column_values_to_be_between", "seconds_since_previous"),
        ("expect_column_values_to_be_in_set", "alloy"),
    }


def test_feature_suite_catches_shares_outside_0_1_and_repeated_parts():
    from alumi_pipelines.lib.plant.features import part_features
    from alumi_pipelines.lib.plant.quality import validate_plant_features

    features = part_features(_samples(["2026-03-02T00:00:00Z", "2026-03-02T00:00:01Z"], ["a", "b"]))
    assert validate_plant_features(features).success
    broken = pl.concat([features, features.head(1)]).with_columns(pl.lit(1.5).alias("melt_temp_c__dropout"))
    failed = {(f["expectation"], f["column"]) for f in validate_plant_features(broken).failures}
    assert failed == {
        ("expect_column_values_to_be_unique", "part_id"),
        ("expect_column_values_to_be_between", "melt_temp_c__dropout"),
    }


def test_reason_patterns_blank_values():
    assert (
        reason_pattern("unknown part_id 'L2-X' (not in the production plan)")
        == "unknown part_id '…' (not in the production plan)"
    )
    assert (
        reason_pattern("timestamp 2027-11-20T10:00:00Z is in the future (now 2026-11-24T02:00:00Z)")
        == "timestamp <time> is in the future (now <time>)"
    )
    assert (
        reason_pattern("melt_temp_c=-5572.78 is outside the plausible range [550, 950]")
        == "melt_temp_c=# is outside the plausible range [#, #]"
    )


def test_day_keys_and_range_tags():
    assert lake_keys.raw_plant_key("2026-03-02").split("/") == ["raw", "plant", "2026-03-02.parquet"]
    assert lake_keys.plant_landing_key("2026-03-02", "historian_L1.csv").split("/") == [
        "landing",
        "plant",
        "2026-03-02",
        "historian_L1.csv",
    ]
    for bad in ("2026-3-2", "2026-02-30", "../x"):
        with pytest.raises(ValueError):
            lake_keys.raw_plant_key(bad)
    assert partition_range_tags(["2026-03-03", "2026-03-02"]) == {
        "dagster/asset_partition_range_start": "2026-03-02",
        "dagster/asset_partition_range_end": "2026-03-03",
    }
    with pytest.raises(ValueError, match="no plant days"):
        partition_range_tags([])


def test_demo_writer_lands_historian_plan_and_outcomes_per_day(lake):
    keys = write_plant_demo(lake, dt.date(2026, 3, 2), 2, 9, seed=1, today=dt.date(2026, 3, 5))
    assert keys == sorted(
        [
            lake_keys.plant_landing_key(f"2026-03-0{d}", n)
            for d in (2, 3)
            for n in ("historian_L1.csv", "historian_L2.csv", "historian_L3.csv", "outcomes.csv", "production_plan.csv")
        ]
    )
    plan = pl.read_csv(lake.read_bytes(lake_keys.plant_landing_key("2026-03-02", lake_keys.PLAN_FILE)))
    outcomes = pl.read_csv(lake.read_bytes(lake_keys.plant_landing_key("2026-03-02", lake_keys.OUTCOMES_FILE)))
    assert plan.height == outcomes.height == 9 and plan["part_id"].to_list() == outcomes["part_id"].to_list()
    assert {"n_scratch", "n_dent", "n_pit", "n_crack", "n_stain"} <= set(outcomes.columns)
    assert plant_days_tags(lake) == {
        "dagster/asset_partition_range_start": "2026-03-02",
        "dagster/asset_partition_range_end": "2026-03-03",
    }


def test_demo_writer_refuses_days_that_are_not_over(lake):
    with pytest.raises(
        ValueError, match=r"last simulated day 2026-03-05 is not over yet .* start on 2026-03-03 or earlier"
    ):
        write_plant_demo(lake, dt.date(2026, 3, 4), 2, 9, seed=1, today=dt.date(2026, 3, 5))
    assert lake.list_files(lake_keys.LANDING) == []
