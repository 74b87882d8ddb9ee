"""Plant sensor normalisation, windowed part features (polars, pandas, numpy), join and time split."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from alumi_pipelines.lib.plant.dataset import (
    DEFECT_TYPES,
    DaySplit,
    OutcomeSchemaError,
    count_column,
    join_outcomes,
    outcomes_from_detections,
    target_column,
    time_split,
)
from alumi_pipelines.lib.plant.features import (
    FEATURE_COLUMNS,
    part_features,
    part_features_pandas,
    window_features_numpy,
)
from alumi_pipelines.lib.plant.samples import (
    CLEAN_COLUMNS,
    REJECT_COLUMNS,
    SIGNAL_STEMS,
    SIGNALS,
    SampleSchemaError,
    normalise_files,
    normalise_samples,
)
from alumi_pipelines.lib.plant.sim import simulate_days

UTC = UTC
NOW = datetime(2026, 4, 1, tzinfo=UTC)
T0 = datetime(2026, 3, 2, 5, 0, 0, tzinfo=UTC)

CANONICAL_VALUES = {
    "melt_temp_c": "720",
    "casting_speed_mm_s": "1.5",
    "mould_level_mm": "50",
    "cooling_water_flow_l_min": "1500",
    "cooling_water_temp_c": "20",
    "rolling_force_kn": "8000",
    "strip_speed_m_min": "300",
}


def historian_frame(rows: list[dict[str, str | None]], columns: dict[str, str] | None = None) -> pl.DataFrame:
    """An all-string historian-like frame: each row overrides defaults; ``columns`` renames canonical tags."""
    columns = columns or {}
    out = []
    for i, row in enumerate(rows):
        base = {
            "timestamp": (T0 + timedelta(seconds=i)).isoformat(),
            "part_id": "P1",
            "line": "L1",
            "alloy": "6063",
            "shift": "A",
            **{columns.get(k, k): v for k, v in CANONICAL_VALUES.items()},
        }
        base.update(row)
        out.append(base)
    return pl.DataFrame(out, schema={k: pl.Utf8 for k in out[0]})


def clean_frame(parts: dict[str, dict[str, list]]) -> pl.DataFrame:
    """A typed clean-sample frame: part -> {"t": seconds after T0, signal: values (None = dropout)}."""
    frames = []
    for part_id, cols in parts.items():
        n = len(cols["t"])
        data = {
            "timestamp": [T0 + timedelta(seconds=s) for s in cols["t"]],
            "part_id": [part_id] * n,
            "line": ["L1"] * n,
            "alloy": [cols.get("alloy", "6063")] * n,
            "shift": ["A"] * n,
        }
        for sig in SIGNALS:
            data[sig] = cols.get(sig, [float(CANONICAL_VALUES[sig])] * n)
        data["source_file"] = ["hand"] * n
        schema = {c: pl.Float64 if c in SIGNALS else pl.Utf8 for c in CLEAN_COLUMNS}
        schema["timestamp"] = pl.Datetime("us", "UTC")
        frames.append(pl.DataFrame(data, schema=schema).select(CLEAN_COLUMNS))
    return pl.concat(frames)


# ------------------------------------------------------------------------------------- windowing


HAND = {
    "A": {
        "t": [0, 1, 2, 3, 4],
        "melt_temp_c": [700.0, 710.0, None, 730.0, 760.0],
        "strip_speed_m_min": [300.0, 300.0, 300.0, 300.0, 400.0],
    },
    "B": {"t": [10], "melt_temp_c": [None]},
}


def test_part_features_exact_values_on_a_hand_made_frame():
    features = part_features(clean_frame(HAND))
    assert features["part_id"].to_list() == ["A", "B"]
    a = features.row(0, named=True)
    assert a["n_samples"] == 5 and a["duration_s"] == 4.0
    assert a["day"] == date(2026, 3, 2) and a["start"] == T0
    assert a["melt_temp_c__mean"] == pytest.approx(725.0, rel=1e-12)
    assert a["melt_temp_c__std"] == pytest.approx(math.sqrt(700.0), rel=1e-12)  # ddof=1 over 4 valid values
    assert (a["melt_temp_c__min"], a["melt_temp_c__max"]) == (700.0, 760.0)
    assert a["melt_temp_c__slope"] == pytest.approx(14.0, rel=1e-12)  # least squares over t = 0, 1, 3, 4
    assert a["melt_temp_c__frac_outside"] == pytest.approx(0.25)  # 760 > 740; 700 sits on the limit
    assert a["melt_temp_c__dropout"] == pytest.approx(0.2)
    assert a["strip_speed_m_min__slope"] == pytest.approx(20.0, rel=1e-12)
    assert a["strip_speed_m_min__frac_outside"] == pytest.approx(0.2)
    assert a["casting_speed_mm_s__std"] == 0.0 and a["casting_speed_mm_s__slope"] == 0.0
    b = features.row(1, named=True)
    assert b["n_samples"] == 1 and b["duration_s"] == 0.0
    assert b["melt_temp_c__dropout"] == 1.0
    for stat in ("mean", "std", "min", "max", "slope", "frac_outside"):
        assert b[f"melt_temp_c__{stat}"] is None
    assert b["casting_speed_mm_s__mean"] == 1.5 and b["casting_speed_mm_s__std"] is None


def test_window_features_numpy_and_pandas_match_the_hand_made_values():
    polars_row = part_features(clean_frame(HAND)).row(0, named=True)
    window = {sig: HAND["A"].get(sig, [float(CANONICAL_VALUES[sig])] * 5) for sig in SIGNALS}
    window["timestamp"] = [(T0 + timedelta(seconds=s)).isoformat() for s in HAND["A"]["t"]]
    numpy_row = window_features_numpy(window)
    pandas_row = part_features_pandas(clean_frame(HAND).to_pandas()).iloc[0]
    for name in FEATURE_COLUMNS:
        assert numpy_row[name] == pytest.approx(polars_row[name], rel=1e-12, abs=1e-12), name
        assert pandas_row[name] == pytest.approx(polars_row[name], rel=1e-12, abs=1e-12), name
    no_time = window_features_numpy({k: v for k, v in window.items() if k != "timestamp"})
    assert no_time == numpy_row  # without timestamps rows are 1 s apart, as they are here


def test_window_features_numpy_rejects_ragged_or_incomplete_windows():
    window = {sig: [1.0, 2.0] for sig in SIGNALS}
    with pytest.raises(KeyError, match="rolling_force_kn"):
        window_features_numpy({k: v for k, v in window.items() if k != "rolling_force_kn"})
    with pytest.raises(ValueError, match="strip_speed_m_min"):
        window_features_numpy(window | {"strip_speed_m_min": [1.0]})


@pytest.fixture(scope="module")
def small_plant():
    return simulate_days(date(2026, 3, 2), 1, 30, seed=3)


def test_polars_pandas_and_numpy_features_agree_on_simulated_samples(small_plant):
    files = small_plant.historian_files(faults=["nan_burst"])
    clean = normalise_files(files, known_parts=small_plant.known_parts, now=NOW).clean
    polars_features = part_features(clean)
    pandas_features = part_features_pandas(clean.to_pandas())
    assert polars_features.height == 30
    assert pandas_features["part_id"].tolist() == polars_features["part_id"].to_list()
    for column in ("line", "alloy", "shift", "day", "n_samples"):
        assert pandas_features[column].tolist() == polars_features[column].to_list(), column
    expected = polars_features.select(FEATURE_COLUMNS).to_numpy()
    assert np.isnan(expected).any()  # the whole-part dropout leaves features missing
    np.testing.assert_allclose(pandas_features[list(FEATURE_COLUMNS)].to_numpy(float), expected, rtol=1e-9, atol=1e-9)
    for i, (_part_id, part) in enumerate(clean.group_by("part_id", maintain_order=True)):
        columns = {c: part[c].to_numpy() for c in (*SIGNALS, "timestamp")}
        row = window_features_numpy(columns)
        np.testing.assert_allclose([row[c] for c in FEATURE_COLUMNS], expected[i], rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("column", "raw", "expected"),
    [
        ("melt_temp_degF", "1328", 720.0),
        ("Melt_Temp_F", "1328", 720.0),
        ("melt_temp_k", "993.15", 720.0),
        ("casting_speed_mm_min", "90", 1.5),
        ("casting_speed_m_min", "0.09", 1.5),
        ("mould_level_in", "2", 50.8),
        ("mould_level_cm", "5", 50.0),
        ("cooling_water_flow_m3_h", "90", 1500.0),
        ("cooling_water_flow_l_s", "25", 1500.0),
        ("cooling_water_temp_degF", "68", 20.0),
        ("rolling_force_t", "1000", 9806.65),
        ("rolling_force_mn", "9.5", 9500.0),
        ("strip_speed_m_s", "5", 300.0),
        ("strip_speed_ft_min", "1000", 304.8),
    ],
)
def test_units_are_normalised_by_tag_suffix(column, raw, expected):
    stem = next(s for s in SIGNAL_STEMS if column.lower().startswith(s + "_"))
    canonical = SIGNAL_STEMS[stem]
    frame = historian_frame([{column: raw}], columns={canonical: column})
    clean, rejects = normalise_samples(frame, source="f.csv", now=NOW)
    assert rejects.height == 0
    assert clean[canonical][0] == pytest.approx(expected, rel=1e-12)


def test_timestamps_with_offsets_become_utc():
    stamps = [
        "2026-03-02T06:00:00+01:00",
        "2026-03-02 00:00:01-05:00",
        "2026-03-02T05:00:02Z",
        "2026-03-02T05:00:03.250+00:00",
    ]
    frame = historian_frame([{"timestamp": s} for s in stamps])
    clean, rejects = normalise_samples(frame, now=NOW)
    assert rejects.height == 0
    assert clean.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert clean["timestamp"].to_list() == [
        T0,
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=2),
        T0 + timedelta(seconds=3, milliseconds=250),
    ]


def test_non_numeric_values_become_dropouts_not_rejects():
    frame = historian_frame([{"melt_temp_c": "Bad"}, {"melt_temp_c": ""}, {"melt_temp_c": "NaN"}, {}])
    clean, rejects = normalise_samples(frame, now=NOW)
    assert rejects.height == 0
    assert clean["melt_temp_c"].to_list() == [None, None, None, 720.0]


def test_row_problems_are_quarantined_with_reasons_and_the_rest_is_sorted():
    rows = [
        {"timestamp": "2026-03-02T05:00:03+00:00"},  # row 0, good (out of order)
        {"timestamp": "2026-03-02T05:00:01+00:00"},  # row 1, good
        {"timestamp": "2026-03-02T05:00:01+00:00", "melt_temp_c": "735"},  # row 2, duplicate of row 1
        {"timestamp": "2027-03-02T05:00:00+00:00"},  # row 3, future
        {"timestamp": "2026-03-02T05:00:05", "part_id": "P1"},  # row 4, no offset
        {"timestamp": "yesterday"},  # row 5, unparsable
        {"timestamp": "2026-03-02T05:00:06+00:00", "part_id": "GHOST"},  # row 6, unknown part
        {"timestamp": "2026-03-02T05:00:07+00:00", "part_id": ""},  # row 7, missing part id
        {"timestamp": "2026-03-02T05:00:08+00:00", "melt_temp_c": "-9999"},  # row 8, implausible
        {"timestamp": "2026-03-02T05:00:02+00:00", "part_id": "P2"},  # row 9, good
        {"timestamp": "2026-03-02T05:00:00+00:00"},  # row 10, good
    ]
    clean, rejects = normalise_samples(historian_frame(rows), source="f.csv", known_parts=["P1", "P2"], now=NOW)
    assert clean.columns == list(CLEAN_COLUMNS) and rejects.columns == list(REJECT_COLUMNS)
    assert clean.select("part_id", pl.col("timestamp").dt.second()).rows() == [
        ("P1", 0),
        ("P1", 1),
        ("P1", 3),
        ("P2", 2),
    ]
    assert clean["melt_temp_c"].to_list() == [720.0] * 4  # the duplicate's 735 did not win
    reasons = dict(zip(rejects["row"].to_list(), rejects["reason"].to_list()))
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert reasons[2] == "duplicate sample: same part_id and timestamp as an earlier row"
    assert reasons[3] == "timestamp 2027-03-02T05:00:00Z is in the future (now 2026-04-01T00:00:00Z)"
    assert reasons[4] == "timestamp '2026-03-02T05:00:05' has no UTC offset"
    assert reasons[5] == "unparsable timestamp 'yesterday'"
    assert reasons[6] == "unknown part_id 'GHOST' (not in the production plan)"
    assert reasons[7] == "missing part_id"
    assert reasons[8] == "melt_temp_c=-9999.0 is outside the plausible range [550, 950]"
    assert set(rejects["source_file"].to_list()) == {"f.csv"}
    assert rejects.filter(pl.col("row") == 5)["raw_timestamp"][0] == "yesterday"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop("part_id"), "missing column 'part_id' (required)"),
        (lambda f: f.drop("rolling_force_kn"), "missing column for rolling_force (required; one of rolling_force_kn"),
        (
            lambda f: f.rename({"melt_temp_c": "melt_temp_rankine"}),
            "column 'melt_temp_rankine': unit 'rankine' is not known",
        ),
        (lambda f: f.with_columns(pl.lit("1328").alias("melt_temp_degF")), "both measure melt_temp"),
        (
            lambda f: f.with_columns(pl.lit("1328").alias("melt_temp_c")),
            "column 'melt_temp_c': median 1328 (as melt_temp_c) is outside the plausible range [550, 950] "
            "(wrong unit?)",
        ),
    ],
)
def test_unusable_files_raise_naming_the_column_and_rule(change, message):
    frame = change(historian_frame([{}, {}, {}]))
    with pytest.raises(SampleSchemaError) as info:
        normalise_samples(frame, source="2026-03-02/historian_L1.csv", now=NOW)
    assert str(info.value).startswith("2026-03-02/historian_L1.csv: ")
    assert message in str(info.value)


def test_simulated_historian_files_normalise_back_to_the_plant_samples(small_plant):
    result = normalise_files(small_plant.historian_files(), known_parts=small_plant.known_parts, now=NOW)
    samples = small_plant.samples
    assert result.file_errors == {} and result.rejects.height == 0
    assert result.clean.select("timestamp", "part_id", "line", "alloy", "shift").equals(
        samples.select("timestamp", "part_id", "line", "alloy", "shift")
    )
    got, want = result.clean.select(SIGNALS).to_numpy(), samples.select(SIGNALS).to_numpy()
    assert (np.isnan(got) == np.isnan(want)).all()
    np.testing.assert_allclose(got, want, rtol=1e-4)  # exports round to 4 decimals in their own units


@pytest.mark.parametrize(
    ("fault", "reason_start"),
    [
        ("duplicates", "duplicate sample"),
        ("future_timestamps", "timestamp 2027-"),
        ("unknown_parts", "unknown part_id 'L1-UNPLANNED-0001'"),
        ("implausible_values", "melt_temp_c=-9999.0 is outside"),
        ("unparsable_timestamps", "unparsable timestamp 'not-a-time'"),
        ("naive_timestamps", "timestamp '2026-03-02T"),
    ],
)
def test_injected_row_faults_are_quarantined_with_their_reason(small_plant, fault, reason_start):
    export = small_plant.historian_export([fault])
    result = normalise_files(export.files, known_parts=small_plant.known_parts, now=NOW)
    assert result.file_errors == {}
    assert result.rejects.height == export.injected[fault]["rows"]
    assert all(r.startswith(reason_start) for r in result.rejects["reason"].to_list())
    assert set(result.rejects["source_file"].to_list()) == {export.injected[fault]["file"]}
    removed = export.injected[fault]["rows"] if fault not in ("duplicates", "unknown_parts") else 0
    assert result.clean.height == small_plant.samples.height - removed


def test_out_of_order_and_nan_bursts_keep_every_sample(small_plant):
    export = small_plant.historian_export(["out_of_order", "nan_burst"])
    result = normalise_files(export.files, known_parts=small_plant.known_parts, now=NOW)
    assert result.rejects.height == 0
    assert result.clean.select("timestamp", "part_id").equals(small_plant.samples.select("timestamp", "part_id"))
    burst = export.injected["nan_burst"]
    features = part_features(result.clean)
    whole = features.filter(pl.col("part_id") == burst["whole_signal_part"]).row(0, named=True)
    assert whole["cooling_water_flow_l_min__dropout"] == 1.0 and whole["cooling_water_flow_l_min__mean"] is None
    hit = features.filter(pl.col("part_id") == burst["part_id"]).row(0, named=True)
    assert hit["melt_temp_c__dropout"] >= 60 / hit["n_samples"]


@pytest.mark.parametrize("fault", ["missing_column", "unknown_unit", "wrong_units"])
def test_a_bad_file_is_quarantined_whole_and_the_others_still_load(small_plant, fault):
    export = small_plant.historian_export([fault], fault_file="2026-03-02/historian_L2.csv")
    result = normalise_files(export.files, known_parts=small_plant.known_parts, now=NOW)
    assert list(result.file_errors) == ["2026-03-02/historian_L2.csv"]
    assert export.injected[fault]["column"] in result.file_errors["2026-03-02/historian_L2.csv"]
    assert set(result.clean["line"].unique().to_list()) == {"L1", "L3"}
    assert result.clean.height == small_plant.samples.filter(pl.col("line") != "L2").height


def test_samples_repeated_across_files_keep_the_first_file(small_plant):
    files = small_plant.historian_files()
    name = "2026-03-02/historian_L1.csv"
    result = normalise_files({name: files[name], "2026-03-02/z_reexport.csv": files[name]}, now=NOW)
    assert result.clean.height == result.rejects.height
    assert set(result.clean["source_file"].to_list()) == {name}
    assert set(result.rejects["reason"].to_list()) == {
        "duplicate sample: same part_id and timestamp already in an earlier file"
    }


def test_unreadable_csv_is_a_file_error():
    result = normalise_files({"x.csv": b'a,b\n1,2,3,4\n"unterminated'}, now=NOW)
    assert list(result.file_errors) == ["x.csv"] and result.clean.height == 0


# ------------------------------------------------------------------------------- join and split


def _features(part_days: dict[str, date]) -> pl.DataFrame:
    n = len(part_days)
    return pl.DataFrame({"part_id": list(part_days), "day": list(part_days.values()), "melt_temp_c__mean": [720.0] * n})


def _outcomes(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["part_id", *map(count_column, DEFECT_TYPES)], orient="row")


def test_join_builds_targets_and_flags_every_unmatched_part():
    d = date(2026, 3, 2)
    features = _features({"A": d, "B": d, "C": d, "E": d, "F": d})
    outcomes = _outcomes(
        [
            ("B", 0, 0, 2, 0, 0),
            ("C", 1, 0, 0, 0, 3),
            ("D", 0, 0, 0, 0, 0),  # no features
            ("E", 0, 0, 0, 0, 0),
            ("E", 1, 0, 0, 0, 0),  # E inspected twice
            ("F", 0, None, 0, 0, 0),  # null count
            ("G", -1, 0, 0, 0, 0),  # negative count, and no features
        ]
    )
    dataset, unmatched = join_outcomes(features, outcomes)
    assert dataset["part_id"].to_list() == ["B", "C"]
    assert dataset.select(map(target_column, DEFECT_TYPES)).rows() == [(0, 0, 1, 0, 0), (1, 0, 0, 0, 1)]
    assert dataset["n_stain"].to_list() == [0, 3]
    assert sorted(unmatched.rows()) == [
        ("A", "features", "no inspection outcome for this part"),
        ("D", "outcomes", "no sensor features for this part_id (unknown part)"),
        ("E", "outcomes", "part_id appears 2 times in the outcomes"),
        ("F", "outcomes", "null n_dent"),
        ("G", "outcomes", "negative n_scratch (-1); no sensor features for this part_id"),
    ]


def test_join_rejects_outcomes_without_count_columns():
    with pytest.raises(OutcomeSchemaError, match="'n_crack'"):
        join_outcomes(_features({"A": date(2026, 3, 2)}), _outcomes([("A", 0, 0, 0, 0, 0)]).drop("n_crack"))


def test_join_of_simulated_features_and_outcomes_is_complete(small_plant):
    clean = normalise_files(small_plant.historian_files(), known_parts=small_plant.known_parts, now=NOW).clean
    dataset, unmatched = join_outcomes(part_features(clean), small_plant.outcomes)
    assert unmatched.height == 0 and dataset.height == 30
    expected = small_plant.outcomes.sort("part_id")
    for t in DEFECT_TYPES:
        positive = (expected[count_column(t)] > 0).cast(pl.Int8).to_list()
        assert dataset.sort("part_id")[target_column(t)].to_list() == positive


def test_outcomes_from_detections_count_per_part_and_reject_foreign_classes():
    detections = pl.DataFrame(
        {"part_id": ["A", "A", "A", "B", None, "B"], "class_name": ["pit", "pit", "stain", "crack", "pit", "oil"]}
    )
    outcomes, rejects = outcomes_from_detections(detections, inspected_parts=["C"])
    assert outcomes.rows() == [("A", 0, 0, 2, 0, 1), ("B", 0, 0, 0, 1, 0), ("C", 0, 0, 0, 0, 0)]
    assert rejects["reason"].to_list() == ["missing part_id", "class 'oil' is not a plant defect type"]


def test_time_split_orders_days_and_holds_out_the_last():
    days = [date(2026, 3, 2) + timedelta(days=i) for i in range(6)]
    dataset = pl.DataFrame({"part_id": [f"p{i}" for i in range(12)], "day": [days[i // 2] for i in range(12)][::-1]})
    split = time_split(dataset, val_days=1, test_days=2)
    assert split.train_days == tuple(days[:3]) and split.val_days == (days[3],) and split.test_days == tuple(days[4:])
    labelled = split.assign(dataset).sort("day")
    assert labelled["split"].to_list() == ["train"] * 6 + ["val"] * 2 + ["test"] * 4
    assert split.rows(dataset, "test").height == 4
    assert DaySplit.from_dict(split.to_dict()) == split
    with pytest.raises(ValueError, match="6 day\\(s\\) of data, need at least val_days \\+ test_days \\+ 1 = 7"):
        time_split(dataset, val_days=3, test_days=3)
