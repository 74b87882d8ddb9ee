"""Edge prediction logs: one row per box read into the day table, bad rows dropped and counted, the day's counts,
and the keys of the predictions zone."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from alumi_pipelines.lib import drift
from alumi_pipelines.resources import lake_keys

SHA = "ab" * 32


def log(**columns) -> pl.DataFrame:
    base = {
        "time": [
            "2026-11-20T08:00:00Z",
            "2026-11-20T08:00:00Z",
            "2026-11-20T10:15:00+01:00",
            "2026-11-20T09:30:00.5",
            "2026-11-20T09:45:00Z",
        ],
        "request_id": ["r1", "r1", "r2", "r3", "r4"],
        "model_version": ["7", "7", "7", "6", "7"],
        "image_sha256": [SHA] * 5,
        "width": [640] * 5,
        "height": [480] * 5,
        "class_name": ["scratch", "pit", None, "dent", ""],
        "confidence": [0.9, 0.55, None, 0.7, 0.3],
        "latency_ms": [12.5] * 5,  # an extra column: dropped
    }
    base.update(columns)
    return pl.DataFrame(base)


def test_a_log_becomes_day_table_rows_with_utc_times_and_requests_without_boxes():
    table, dropped = drift.prediction_log_rows(log(), device="jetson-07", source_file="predictions/x.parquet")
    assert dropped == 0
    assert table.schema == pl.Schema(drift.PREDICTION_TABLE_SCHEMA)
    assert table.select("request_id", "class_name", "confidence").rows() == [
        ("r1", "scratch", 0.9),
        ("r1", "pit", 0.55),
        ("r2", None, None),
        ("r3", "dent", 0.7),
        ("r4", None, None),  # an empty class name is a request without a box; its confidence is cleared
    ]
    assert table["time"].to_list() == [
        dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 20, 9, 15, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 20, 9, 30, 0, 500000, tzinfo=dt.UTC),  # no zone: taken as UTC
        dt.datetime(2026, 11, 20, 9, 45, tzinfo=dt.UTC),
    ]
    assert set(table["device"]) == {"jetson-07"} and set(table["source_file"]) == {"predictions/x.parquet"}
    assert table["width"].to_list() == [640] * 5


def test_timestamp_columns_naive_or_zoned_and_numbers_as_text_are_read():
    moments = [dt.datetime(2026, 11, 20, h) for h in (1, 2, 3, 4, 5)]
    naive = log(time=moments, model_version=[7, 7, 7, 6, 7])
    zoned = log(time=pl.Series(moments).dt.replace_time_zone("Europe/Berlin"))
    table, _ = drift.prediction_log_rows(naive, device="d", source_file="f")
    assert table["time"][0] == dt.datetime(2026, 11, 20, 1, tzinfo=dt.UTC)
    assert table["model_version"].to_list() == ["7", "7", "7", "6", "7"]
    table, _ = drift.prediction_log_rows(zoned, device="d", source_file="f")
    assert table["time"][0] == dt.datetime(2026, 11, 20, 0, tzinfo=dt.UTC)  # 01:00 in Berlin
    bare = log().drop("width", "height")
    assert drift.prediction_log_rows(bare, device="d", source_file="f")[0]["width"].null_count() == 5


def test_bad_rows_are_dropped_and_counted():
    bad = log(
        time=["2026-11-20T08:00:00Z", "not a time", "2026-11-20T08:00:00Z", "2026-11-20T08:00:00Z", None],
        request_id=["r1", "r2", None, "r4", "r5"],
        confidence=[1.5, 0.5, 0.5, None, 0.5],
        class_name=["scratch", "dent", "pit", "dent", "pit"],
    )
    table, dropped = drift.prediction_log_rows(bad, device="d", source_file="f")
    assert (table.height, dropped) == (0, 5)  # > 1, bad time, no request id, a box without confidence, no time


def test_a_log_without_a_required_column_or_with_numeric_times_is_refused():
    with pytest.raises(drift.PredictionLogError, match=r"missing column\(s\) confidence"):
        drift.prediction_log_rows(log().drop("confidence"), device="d", source_file="f")
    with pytest.raises(drift.PredictionLogError, match="column 'time' must hold timestamps or ISO-8601 strings"):
        drift.prediction_log_rows(log(time=[1, 2, 3, 4, 5]), device="d", source_file="f")


def test_the_summary_of_a_day():
    a, _ = drift.prediction_log_rows(log(), device="jetson-07", source_file="f1")
    b, _ = drift.prediction_log_rows(
        log(time=["2026-11-21T00:30:00Z"] * 5, confidence=[0.1, 0.2, None, 0.3, None]),
        device="jetson-09",
        source_file="f2",
    )
    summary = drift.prediction_summary(pl.concat([a, b]), "2026-11-20")
    assert summary == {
        "requests": 8,  # r1..r4 on each device
        "requests_without_boxes": 4,
        "boxes": 6,
        "devices": ["jetson-07", "jetson-09"],
        "model_versions": {"6": 2, "7": 6},
        "class_counts": {"dent": 2, "pit": 2, "scratch": 2},
        "confidence": {
            "p05": pytest.approx(0.125),
            "p25": pytest.approx(0.225),
            "p50": pytest.approx(0.425),
            "p75": pytest.approx(0.6625),
            "p95": pytest.approx(0.85),
        },
        "rows_outside_day": 5,
    }
    assert drift.prediction_boxes(pl.concat([a, b]), "6").rows() == [
        ("jetson-07", "r3", "dent", 0.7),
        ("jetson-09", "r3", "dent", 0.3),
    ]
    empty = drift.prediction_summary(drift.empty_prediction_table(), "2026-11-20")
    assert (empty["requests"], empty["boxes"], empty["confidence"]["p50"], empty["devices"]) == (0, 0, None, [])


def test_prediction_zone_keys():
    assert lake_keys.predictions_day_prefix("jetson-07", "2026-11-20") == "predictions/jetson-07/2026-11-20"
    assert (
        lake_keys.predictions_hour_key("jetson-07", "2026-11-20", 8)
        == "predictions/jetson-07/2026-11-20/2026-11-20T08.parquet"
    )
    assert lake_keys.processed_predictions_key("2026-11-20") == "processed/predictions/2026-11-20.parquet"
    assert lake_keys.prediction_drift_report_key("abc", "html") == "reports/prediction_drift/abc.html"
    assert lake_keys.PREDICTION_DRIFT_LATEST == "reports/prediction_drift/latest.json"
    with pytest.raises(ValueError, match="prediction day '2026-13-01'"):
        lake_keys.processed_predictions_key("2026-13-01")
    with pytest.raises(ValueError, match="prediction day '20261120'"):
        lake_keys.predictions_day_prefix("d", "20261120")
    with pytest.raises(ValueError, match="hour 24"):
        lake_keys.predictions_hour_key("d", "2026-11-20", 24)


def test_the_log_alumi_edge_sync_writes_is_read_as_it_is_meant():
    """The contract with the edge package: its Parquet (a timestamp column, box and timing structs, extra
    columns) reads into the day table, a request without a box as one row without class."""
    import io

    sync = pytest.importorskip("alumi_edge.sync")
    records = [
        {
            "time": "2026-11-20T08:00:01.250Z",
            "request_id": "det-1",
            "model_version": "7",
            "image_sha256": SHA,
            "width": 640,
            "height": 480,
            "boxes": [
                {"class_id": 0, "class_name": "scratch", "confidence": 0.81, "x1": 1, "y1": 2, "x2": 30, "y2": 40},
                {"class_id": 2, "class_name": "pit", "confidence": 0.42, "x1": 5, "y1": 6, "x2": 9, "y2": 9},
            ],
            "timing_ms": {"inference": 12.5},
        },
        {"time": "2026-11-20T08:10:00Z", "request_id": "det-2", "model_version": "7", "image_sha256": SHA, "boxes": []},
    ]
    data = sync.prediction_log_parquet(records, "jetson 07")
    table, dropped = drift.prediction_log_rows(pl.read_parquet(io.BytesIO(data)), device="jetson-07", source_file="f")
    assert dropped == 0
    assert table.select("request_id", "class_name", "confidence", "width").rows() == [
        ("det-1", "scratch", 0.81, 640),
        ("det-1", "pit", 0.42, 640),
        ("det-2", None, None, None),
    ]
    assert table["time"][0] == dt.datetime(2026, 11, 20, 8, 0, 1, 250000, tzinfo=dt.UTC)
    summary = drift.prediction_summary(table, "2026-11-20")
    assert (summary["requests"], summary["requests_without_boxes"], summary["boxes"]) == (2, 1, 2)
