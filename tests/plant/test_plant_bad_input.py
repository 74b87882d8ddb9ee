"""Bad input through the assets: every problem is quarantined or flagged with its reason, good data flows on."""

from __future__ import annotations

import datetime as dt
import re

import polars as pl
import pytest
from plant_support import check_results, materialized, metadata, run_branch, start_day

from alumi_pipelines.assets.plant.risk_dataset import read_risk_dataset
from alumi_pipelines.assets.plant.sensor_raw import csv_bytes, landing_days
from alumi_pipelines.resources import lake_keys

RAW_AND_FEATURES = ["plant_sensor_raw", "plant_sensor_features"]

# (day index, line) -> faults injected into that one historian file
FILE_FAULTS = {
    (0, "L1"): ["future_timestamps"],
    (0, "L2"): ["unknown_parts"],
    (0, "L3"): ["out_of_order", "duplicates"],
    (1, "L1"): ["nan_burst"],
    (1, "L2"): ["missing_column"],
    (1, "L3"): ["wrong_units"],
    (2, "L1"): ["unknown_unit"],
    (2, "L2"): ["implausible_values"],
    (2, "L3"): ["naive_timestamps", "unparsable_timestamps"],
}


def land(lake, plant, faults: dict | None = None) -> dict:
    """Write a plant's days into landing/plant (with per-file faults); returns what was injected per file."""
    injected = {}
    files = plant.historian_files()
    for (index, line), names in (faults or {}).items():
        name = f"{plant.start + dt.timedelta(days=index)}/historian_{line}.csv"
        export = plant.historian_export(names, fault_file=name)
        files[name] = export.files[name]
        injected[name] = export.injected
    for name, data in files.items():
        day, _, file_name = name.partition("/")
        lake.write_bytes(lake_keys.plant_landing_key(day, file_name), data)
    for offset in range(plant.days):
        day = plant.start + dt.timedelta(days=offset)
        lake.write_bytes(
            lake_keys.plant_landing_key(day.isoformat(), lake_keys.PLAN_FILE),
            csv_bytes(plant.parts.filter(pl.col("day") == day).select("part_id", "line", "alloy")),
        )
        lake.write_bytes(
            lake_keys.plant_landing_key(day.isoformat(), lake_keys.OUTCOMES_FILE),
            csv_bytes(plant.outcomes.filter(pl.col("day") == day)),
        )
    return injected


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """Three days of 30 parts with a different fault in each historian file, raw + features materialised."""
    from types import SimpleNamespace

    from dagster import DagsterInstance

    from alumi_pipelines.lib.plant.sim import simulate_days
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(tmp_path_factory.mktemp("faulty") / "lake"))
    plant = simulate_days(start_day(3), 3, 30, seed=3)
    injected = land(lake, plant, FILE_FAULTS)
    days = landing_days(lake)
    lake.write_bytes(lake_keys.plant_landing_key(days[2], "notes.txt"), b"shift log: nothing to report")
    result = run_branch(lake, None, DagsterInstance.ephemeral(), days, selection=RAW_AND_FEATURES)
    return SimpleNamespace(lake=lake, plant=plant, days=days, injected=injected, result=result)


def _rejects(faulty, day_index: int):
    return faulty.lake.read_table(lake_keys.plant_rejects_key(faulty.days[day_index]))


def _file_errors(faulty, day_index: int) -> dict[str, str]:
    table = faulty.lake.read_table(lake_keys.plant_file_errors_key(faulty.days[day_index]))
    return dict(zip(table["file"].to_list(), table["reason"].to_list()))


def _day_samples(plant, day: str, lines=("L1", "L2", "L3")):
    return plant.samples.filter(
        (pl.col("timestamp").dt.date().cast(pl.Utf8) == day) & pl.col("line").is_in(list(lines))
    )


def test_good_data_flows_on_and_the_quarantine_check_warns(faulty):
    result = faulty.result
    assert result.success, "row and file problems must not stop the good data"
    assert materialized(result) == sorted(RAW_AND_FEATURES)
    checks = check_results(result)
    assert checks["plant_samples_valid"].passed and checks["plant_features_valid"].passed
    quarantine = checks["plant_sensor_quarantine"]
    assert not quarantine.passed and quarantine.severity.value == "WARN"
    assert quarantine.metadata["refused_files"].value == 4
    meta = metadata(result, "plant_sensor_raw")
    assert meta["refused_files"] == 4 and meta["rejected_rows"] == 5 + 20 + 6 + 3 + 2 + 2
    assert "unknown part_id '…' (not in the production plan) | 20 |" in meta["reject_reasons"]
    assert "timestamp <time> is in the future (now <time>) | 5 |" in meta["reject_reasons"]


def test_future_timestamps_unknown_parts_duplicates_and_disorder(faulty):
    day = faulty.days[0]
    reasons = _rejects(faulty, 0)["reason"].to_list()
    assert sum("is in the future" in r for r in reasons) == 5
    assert reasons.count("unknown part_id 'L2-UNPLANNED-0001' (not in the production plan)") == 20
    assert reasons.count("duplicate sample: same part_id and timestamp as an earlier row") == 6
    assert len(reasons) == 31

    raw = faulty.lake.read_table(lake_keys.raw_plant_key(day))
    assert raw.height == _day_samples(faulty.plant, day).height - 5  # the 5 future-stamped samples left
    l3 = raw.filter(pl.col("line") == "L3")  # exported shuffled, with 6 rows twice: back in order, each once
    expected = _day_samples(faulty.plant, day, ["L3"]).sort("part_id", "timestamp")
    assert l3["timestamp"].equals(expected["timestamp"]) and l3["part_id"].equals(expected["part_id"])
    steps = raw.select((pl.col("timestamp").diff().over("part_id").dt.total_seconds()).alias("s")).drop_nulls()
    assert steps["s"].min() >= 1


def test_unusable_files_are_refused_whole_with_the_rule_and_kept_in_quarantine(faulty):
    day1, day2 = faulty.days[1], faulty.days[2]
    l2, l3 = (lake_keys.plant_landing_key(day1, f"historian_{line}.csv") for line in ("L2", "L3"))
    errors = _file_errors(faulty, 1)
    assert sorted(errors) == [l2, l3]
    assert "missing column for rolling_force (required; one of rolling_force_kn" in errors[l2]
    assert re.search(r"column 'Melt_Temp_C'|column 'melt_temp_c'", errors[l3])
    assert "(wrong unit?)" in errors[l3]
    errors2 = _file_errors(faulty, 2)
    assert "unit 'rankine' is not known for melt_temp" in errors2[lake_keys.plant_landing_key(day2, "historian_L1.csv")]
    assert "not a historian CSV export" in errors2[lake_keys.plant_landing_key(day2, "notes.txt")]
    for day, name in (
        (day1, "historian_L2.csv"),
        (day1, "historian_L3.csv"),
        (day2, "historian_L1.csv"),
        (day2, "notes.txt"),
    ):
        assert faulty.lake.read_bytes(lake_keys.plant_quarantine_file_key(day, name)) == faulty.lake.read_bytes(
            lake_keys.plant_landing_key(day, name)
        )
    raw1 = faulty.lake.read_table(lake_keys.raw_plant_key(day1))
    assert raw1["line"].unique().to_list() == ["L1"] and raw1.height == _day_samples(faulty.plant, day1, ["L1"]).height


def test_nan_bursts_are_kept_as_dropouts_and_flagged(faulty):
    day1 = faulty.days[1]
    info = faulty.injected[f"{day1}/historian_L1.csv"]["nan_burst"]
    flags = faulty.lake.read_table(lake_keys.plant_flags_key(day1))
    whole = flags.filter(pl.col("part_id") == info["whole_signal_part"])
    assert (
        "cooling_water_flow_l_min",
        "cooling_water_flow_l_min missing for the whole part (sensor down)",
    ) in whole.select("signal", "reason").rows()
    features = faulty.lake.read_table(lake_keys.plant_features_key(day1))
    burst = features.filter(pl.col("part_id") == info["part_id"]).row(0, named=True)
    n = burst["n_samples"]
    # 60 s of every signal missing; dropouts the simulator put there itself can only add to it
    assert burst["casting_speed_mm_s__dropout"] >= 60 / n and burst["melt_temp_c__dropout"] >= 60 / n
    assert burst["n_samples"] == faulty.plant.parts.filter(pl.col("part_id") == info["part_id"])["n_samples"][0]
    assert features.filter(pl.col("part_id") == info["whole_signal_part"])["cooling_water_flow_l_min__mean"][0] is None


def test_implausible_values_and_bad_timestamps_are_rejected_with_reasons(faulty):
    reasons = _rejects(faulty, 2)["reason"].to_list()
    # -9999 in the L2 historian's own unit (degF) is -5572.8 degC
    assert (
        sum(r.startswith("melt_temp_c=-5572.7") and "outside the plausible range [550, 950]" in r for r in reasons) == 3
    )
    assert sum(r.endswith("has no UTC offset") for r in reasons) == 2
    assert reasons.count("unparsable timestamp 'not-a-time'") == 2
    assert len(reasons) == 7


def test_a_signal_down_for_a_third_of_the_day_fails_the_blocking_check(tmp_path):
    from dagster import DagsterInstance

    from alumi_pipelines.lib.plant.sim import simulate_days
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(tmp_path / "lake"))
    plant = simulate_days(start_day(1), 1, 30, seed=4)
    land(lake, plant)
    day = landing_days(lake)[0]
    key = lake_keys.plant_landing_key(day, "historian_L1.csv")
    frame = pl.read_csv(lake.read_bytes(key), infer_schema=False)
    frame = frame.with_columns(pl.lit(None, pl.Utf8).alias("strip_speed_m_min"))
    lake.write_bytes(key, frame.write_csv().encode())
    result = run_branch(lake, None, DagsterInstance.ephemeral(), [day], selection=RAW_AND_FEATURES)
    assert not result.success
    assert materialized(result) == ["plant_sensor_raw"]
    check = check_results(result)["plant_samples_valid"]
    assert not check.passed
    assert "expect_column_values_to_not_be_null(strip_speed_m_min)" in check.metadata["summary"].value
    others = _day_samples(plant, day, ["L2", "L3"])["strip_speed_m_min"].null_count()  # the plant's own dropouts
    assert (
        lake.read_table(lake_keys.raw_plant_key(day))["strip_speed_m_min"].null_count()
        == _day_samples(plant, day, ["L1"]).height + others
    )


def test_outcome_problems_are_flagged_and_vision_outcomes_fill_in(tmp_path):
    """Unknown part ids, a non-numeric count and an outcomes file without a column are reported, never dropped
    silently; parts the QA station did not report get their counts from vision labels that carry a part_id."""
    from dagster import DagsterInstance

    from alumi_pipelines.lib.plant.sim import simulate_days
    from alumi_pipelines.lib.vision.labels import label_schema
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(tmp_path / "lake"))
    plant = simulate_days(start_day(4), 4, 30, seed=5)
    land(lake, plant)
    days = landing_days(lake)
    key = lambda i: lake_keys.plant_landing_key(days[i], lake_keys.OUTCOMES_FILE)  # noqa: E731
    # day 1: a part nobody produced, and a count that is not a number
    day1 = pl.read_csv(lake.read_bytes(key(1)), infer_schema=False)
    bad_part = day1["part_id"][3]
    ghost = day1.head(1).with_columns(pl.lit("L9-GHOST-0001").alias("part_id"))
    day1 = pl.concat([day1, ghost]).with_columns(
        pl.when(pl.col("part_id") == bad_part).then(pl.lit("two")).otherwise(pl.col("n_pit")).alias("n_pit")
    )
    lake.write_bytes(key(1), day1.write_csv().encode())
    # day 2: the QA export lost a column
    lake.write_bytes(key(2), pl.read_csv(lake.read_bytes(key(2))).drop("n_stain").write_csv().encode())
    # day 3: no QA export; the vision branch saw every part (one image each) and a part that does not exist
    lake.delete(key(3))
    day3_parts = plant.parts.filter(pl.col("day").cast(pl.Utf8) == days[3])["part_id"].to_list()
    images = pl.DataFrame(
        {
            "image_id": [f"img{i:03d}" for i in range(len(day3_parts) + 2)],
            "part_id": day3_parts + ["L1-NOT-A-PART", plant.parts["part_id"][0]],
        }
    )
    boxes = [
        ("img000", "scratch"),
        ("img000", "scratch"),
        ("img001", "dent"),
        ("img002", "oil"),
        (f"img{len(day3_parts):03d}", "pit"),
        (f"img{len(day3_parts) + 1:03d}", "crack"),
    ]
    labels = pl.DataFrame(
        [
            {
                "image_id": i,
                "class_name": c,
                "class_id": 0,
                "x_center": 0.5,
                "y_center": 0.5,
                "width": 0.1,
                "height": 0.1,
                "source": "alumi",
                "source_file": "x",
                "batch": "vis",
            }
            for i, c in boxes
        ],
        schema=label_schema(),
    )
    lake.write_table(lake_keys.processed_features_key("vis"), images)
    lake.write_table(lake_keys.processed_labels_key("vis"), labels)

    result = run_branch(
        lake, None, DagsterInstance.ephemeral(), days, selection=[*RAW_AND_FEATURES, "defect_risk_dataset"]
    )
    assert "defect_risk_dataset" in materialized(result)
    meta = metadata(result, "defect_risk_dataset")
    assert meta["unknown_part_ids"] == 2
    assert set(meta["unknown_part_id_examples"].split(", ")) == {"L9-GHOST-0001", "L1-NOT-A-PART"}
    assert "n_stain" in meta["outcome_file_errors"] and days[2] in meta["outcome_file_errors"]
    assert meta["vision_outcomes"] == "32 parts inspected by the vision branch, 1 detections not usable"
    assert not check_results(result)["risk_dataset_unmatched"].passed

    unmatched = lake.read_table(lake_keys.RISK_UNMATCHED_KEY)
    reasons = dict(zip(unmatched["part_id"], unmatched["reason"]))
    assert reasons[bad_part] == "null n_pit"
    assert reasons["L9-GHOST-0001"] == "no sensor features for this part_id (unknown part)"
    day2_parts = plant.parts.filter(pl.col("day").cast(pl.Utf8) == days[2])["part_id"].to_list()
    assert all(reasons[p] == "no inspection outcome for this part" for p in day2_parts)
    assert unmatched.height == 1 + 2 + len(day2_parts)
    assert lake.exists(lake_keys.outcome_quarantine_file_key(key(2)))

    dataset, split = read_risk_dataset(lake)
    assert [d.isoformat() for d in split.test_days] == [days[3]]
    test = split.rows(dataset, "test").sort("part_id")
    assert test["part_id"].to_list() == sorted(day3_parts)
    counts = dict(zip(test["part_id"], test["n_scratch"]))
    assert counts[day3_parts[0]] == 2 and sum(counts.values()) == 2
    assert test.filter(pl.col("part_id") == day3_parts[1])["y_dent"][0] == 1
    first = dataset.filter(pl.col("part_id") == plant.parts["part_id"][0])  # QA said so: vision does not override
    assert first["n_crack"][0] == plant.outcomes.filter(pl.col("part_id") == plant.parts["part_id"][0])["n_crack"][0]
    assert bad_part not in dataset["part_id"].to_list()


def test_a_day_without_landing_files_materialises_empty_tables(tmp_path):
    from dagster import DagsterInstance

    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(tmp_path / "lake"))
    day = start_day(1).isoformat()
    result = run_branch(lake, None, DagsterInstance.ephemeral(), [day], selection=RAW_AND_FEATURES)
    assert result.success and materialized(result) == sorted(RAW_AND_FEATURES)
    meta = metadata(result, "plant_sensor_raw")
    assert meta["files"] == 0 and meta["samples"] == 0 and meta["days_without_files"] == day
    assert lake.read_table(lake_keys.raw_plant_key(day)).height == 0
    assert lake.read_table(lake_keys.plant_features_key(day)).height == 0
    assert metadata(result, "plant_sensor_features")["parts"] == 0
