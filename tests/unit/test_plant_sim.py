"""The simulated casting and rolling plant: determinism, structure, mechanism and historian export."""

from __future__ import annotations

import io
from datetime import date, timedelta

import polars as pl
import pytest

from alumi_pipelines.lib.plant.dataset import ALLOYS, DEFECT_TYPES, count_column
from alumi_pipelines.lib.plant.samples import SIGNALS
from alumi_pipelines.lib.plant.sim import (
    CRACK_SENSITIVITY,
    FAULTS,
    defect_intensity,
    historian_file_name,
    simulate_days,
)

START = date(2026, 3, 2)


@pytest.fixture(scope="module")
def plant():
    return simulate_days(START, 3, 90, seed=11)


def test_same_seed_same_plant_other_seed_other_plant(plant):
    again = simulate_days(START, 3, 90, seed=11)
    assert again.samples.equals(plant.samples) and again.outcomes.equals(plant.outcomes)
    assert again.historian_files() == plant.historian_files()
    other = simulate_days(START, 3, 90, seed=12)
    assert not other.samples.select(SIGNALS).equals(plant.samples.select(SIGNALS))


def test_adding_days_leaves_earlier_days_unchanged(plant):
    shorter = simulate_days(START, 2, 90, seed=11)
    first_two = plant.samples.filter(pl.col("timestamp").dt.date() < START + timedelta(days=2))
    assert shorter.samples.equals(first_two)


def test_parts_run_at_1_hz_for_60_to_300_s_within_their_day(plant):
    parts, samples = plant.parts, plant.samples
    assert parts.height == 3 * 90 and parts["part_id"].is_unique().all()
    assert parts.group_by("day", "line").len()["len"].to_list() == [30] * 9
    assert parts["n_samples"].min() >= 60 and parts["n_samples"].max() <= 300
    assert samples.height == parts["n_samples"].sum()
    steps = samples.select(pl.col("timestamp").diff().over("part_id").dt.total_seconds().drop_nulls().unique())
    assert steps.to_series().to_list() == [1]
    span = samples.group_by("part_id").agg(
        pl.col("timestamp").min().alias("start"), pl.col("timestamp").max().alias("end")
    )
    joined = parts.join(span, on="part_id", suffix="_seen")
    assert joined.filter((pl.col("start") != pl.col("start_seen")) | (pl.col("end") != pl.col("end_seen"))).height == 0
    assert (joined["start"].dt.date() == joined["day"]).all() and (joined["end"].dt.date() == joined["day"]).all()
    assert set(samples["alloy"].unique().to_list()) <= set(ALLOYS)


def test_shift_follows_plant_local_time(plant):
    hours = plant.samples.select(
        pl.col("timestamp").dt.convert_time_zone("Europe/Berlin").dt.hour().alias("h"), "shift"
    )
    night, morning = (pl.col("h") >= 22) | (pl.col("h") < 6), pl.col("h") < 14
    expected = hours.select(
        pl.when(night).then(pl.lit("C")).when(morning).then(pl.lit("A")).otherwise(pl.lit("B"))
    ).to_series()
    assert (hours["shift"] == expected).all()
    assert set(hours["shift"].unique().to_list()) == {"A", "B", "C"}


def test_sensor_dropouts_come_in_bursts(plant):
    samples = plant.samples
    missing = samples.select(pl.col(SIGNALS).is_null().mean()).row(0)
    assert all(0.0 < m < 0.05 for m in missing)
    run_lengths = (
        samples.select("part_id", pl.col("melt_temp_c").is_null().alias("gap"))
        .with_columns(pl.col("gap").rle_id().over("part_id").alias("run"))
        .filter("gap")
        .group_by("part_id", "run")
        .len()["len"]
    )
    assert run_lengths.min() >= 5  # no isolated gaps: the sensor drops out for 5-40 s (or a whole part)


def test_mechanism_needs_interactions_not_single_conditions():
    calm = {
        "melt_mean": 720.0,
        "flow_mean": 1550.0,
        "speed_ratio": 1.0,
        "cwt_mean": 22.0,
        "mould_amplitude": 0.0,
        "strip_spike": 1.0,
        "force_cv": 0.012,
    }
    base = defect_intensity(calm, "6082")
    assert all(v < 0.05 for v in base.values())
    hot = defect_intensity(calm | {"melt_mean": 745.0}, "6082")
    low_flow = defect_intensity(calm | {"flow_mean": 1250.0}, "6082")
    both = defect_intensity(calm | {"melt_mean": 745.0, "flow_mean": 1250.0}, "6082")
    assert hot["pit"] < 0.05 and low_flow["pit"] < 0.05 and both["pit"] > 2.0
    pushed_cold = calm | {"speed_ratio": 1.2, "cwt_mean": 16.0}
    assert defect_intensity(calm | {"speed_ratio": 1.2}, "6082")["crack"] < 0.2
    assert defect_intensity(pushed_cold, "6082")["crack"] > 2.5
    assert defect_intensity(pushed_cold, "1050")["crack"] == pytest.approx(0.02, abs=1e-6)
    assert CRACK_SENSITIVITY["1050"] == 0.0
    assert defect_intensity(calm | {"strip_spike": 1.4}, "6063")["scratch"] > 1.5
    assert defect_intensity(calm | {"force_cv": 0.08}, "6063")["scratch"] > 1.5
    stain_hot = defect_intensity(calm | {"cwt_mean": 30.0}, "6063")["stain"]
    stain_hot_low_flow = defect_intensity(calm | {"cwt_mean": 30.0, "flow_mean": 1300.0}, "6063")["stain"]
    assert 0.4 < stain_hot < 0.7 and stain_hot_low_flow > 2.0
    oscillating = calm | {"mould_amplitude": 2.6}
    assert defect_intensity(oscillating, "1050")["dent"] > 1.8 and defect_intensity(oscillating, "6082")["dent"] < 0.1


def test_outcomes_follow_the_intensities(plant):
    joined = plant.outcomes.join(plant.conditions, on="part_id")
    assert joined.height == plant.parts.height
    for t in DEFECT_TYPES:
        positive = pl.col(count_column(t)) > 0
        rate = joined.select(positive.mean()).item()
        assert 0.05 < rate < 0.35, (t, rate)
        high = joined.filter(pl.col(f"lambda_{t}") > 1.0).select(positive.mean()).item()
        low = joined.filter(pl.col(f"lambda_{t}") < 0.1).select(positive.mean()).item()
        assert high > 0.6 and low < 0.1, (t, high, low)


def test_historian_export_per_day_and_line_in_each_line_dialect(plant):
    files = plant.historian_files()
    expected = [historian_file_name(START + timedelta(days=d), line) for d in range(3) for line in ("L1", "L2", "L3")]
    assert sorted(files) == sorted(expected) and expected[0] == "2026-03-02/historian_L1.csv"
    heads = {line: files[historian_file_name(START, line)].decode().splitlines() for line in ("L1", "L2", "L3")}
    assert heads["L1"][0].split(",")[:2] == ["timestamp", "part_id"] and "melt_temp_c" in heads["L1"][0]
    assert "melt_temp_degF" in heads["L2"][0] and "cooling_water_temp_degF" in heads["L2"][0]
    l3_header = set(heads["L3"][0].split(","))
    assert {"casting_speed_mm_min", "strip_speed_m_s", "rolling_force_t", "Timestamp", "Part_Id"} <= l3_header
    l1 = pl.read_csv(io.BytesIO(files[historian_file_name(START, "L1")]), infer_schema=False)
    l2 = pl.read_csv(io.BytesIO(files[historian_file_name(START, "L2")]), infer_schema=False)
    l3 = pl.read_csv(io.BytesIO(files[historian_file_name(START, "L3")]), infer_schema=False)
    assert l1["timestamp"].str.ends_with("+01:00").all()  # plant-local time in March, with offset
    assert l2["timestamp"].str.ends_with("Z").all()
    assert l3["Timestamp"].str.contains(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\+01:00$").all()
    assert (
        l3.select(pl.col(c) == "Bad" for c in l3.columns).sum_horizontal() > 0
    ).any()  # L3 writes "Bad" for dropouts
    first_melt_f = float(l2["melt_temp_degF"].drop_nulls()[0])
    first_part = l2["part_id"][0]
    melt_c = plant.samples.filter(pl.col("part_id") == first_part)["melt_temp_c"].drop_nulls()[0]
    assert (first_melt_f - 32) * 5 / 9 == pytest.approx(melt_c, abs=1e-3)
    assert sum(len(b.decode().splitlines()) - 1 for b in files.values()) == plant.samples.height


def test_fault_injection_touches_only_the_chosen_file_and_logs_what_it_did(plant):
    clean = plant.historian_files()
    target = historian_file_name(START + timedelta(days=1), "L3")
    export = plant.historian_export(["duplicates", "unknown_parts", "future_timestamps"], fault_file=target)
    assert [n for n in clean if clean[n] != export.files[n]] == [target]
    assert export.injected["duplicates"] == {"file": target, "rows": 6}
    assert export.injected["unknown_parts"]["part_id"] == "L3-UNPLANNED-0001"
    lines = len(export.files[target].decode().splitlines()) - len(clean[target].decode().splitlines())
    assert lines == 6 + 20
    assert set(FAULTS) >= {"missing_column", "wrong_units", "nan_burst", "out_of_order"}


def test_bad_arguments_are_refused_with_the_reason(plant):
    with pytest.raises(ValueError, match="unknown fault"):
        plant.historian_files(["gremlins"])
    with pytest.raises(ValueError, match="do not fit in one day on line L1"):
        simulate_days(START, 1, 3 * 600, seed=0)
    with pytest.raises(ValueError, match="parts_per_day >= 3"):
        simulate_days(START, 1, 2, seed=0)
