"""Edge prediction logs → edge_predictions per day → prediction_drift against the champion's first days in
service → a failed report → drift_sensor asks for retraining."""

import datetime as dt
import json

import numpy as np
import polars as pl
from dagster import DagsterInstance, SkipReason, build_sensor_context, materialize

from alumi_pipelines.assets import predictions
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.sensors.drift import drift_sensor

CHAMPION = "7"
REFERENCE_MIX = {"scratch": 0.5, "dent": 0.3, "pit": 0.2}
SHIFTED_MIX = {"scratch": 0.1, "dent": 0.2, "pit": 0.7}


def write_logs(lake, device, day, *, seed, version=CHAMPION, mix=None, beta=(6, 2), hours=range(6, 22)):
    """Hourly logs of one device and day (06-21 h): 30 requests an hour with 0-3 boxes each (one row per box, a request
    without a box as one row without class), plus an extra column a newer edge might add."""
    rng = np.random.default_rng(seed)
    names, weights = zip(*(mix or REFERENCE_MIX).items())
    for hour in hours:
        rows = []
        start = dt.datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")
        for i in range(30):
            request = {
                "time": (start + dt.timedelta(seconds=97 * i)).isoformat().replace("+00:00", "Z"),
                "request_id": f"{device}-{day}-{hour:02d}-{i:03d}",
                "model_version": version,
                "image_sha256": f"{seed:08x}{hour:02d}{i:03d}".ljust(64, "0"),
                "width": 640,
                "height": 480,
                "latency_ms": float(rng.uniform(8, 20)),
            }
            n = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.3, 0.4, 0.2]))
            classes = rng.choice(names, size=n, p=weights)
            confidences = rng.beta(*beta, size=n)
            rows += [{**request, "class_name": str(c), "confidence": float(p)} for c, p in zip(classes, confidences)]
            if n == 0:
                rows.append({**request, "class_name": None, "confidence": None})
        lake.write_table(lake_keys.predictions_hour_key(device, day, hour), pl.DataFrame(rows))


def test_prediction_drift_passes_on_a_like_day_fails_on_a_shifted_one_and_requests_retraining(lake):
    settings = PipelineSettings(classes=["scratch", "dent", "pit"])
    resources = {"lake": lake, "pipeline_settings": settings}
    instance = DagsterInstance.ephemeral()
    lake.write_json(lake_keys.CHAMPION_RECORD, {"version": CHAMPION, "recorded_at": "2026-11-01T12:00:00+00:00"})

    # before the promotion the previous model answered differently; it must not enter the reference
    write_logs(lake, "jetson-07", "2026-10-31", seed=1, version="6", mix=SHIFTED_MIX, beta=(2, 3))
    for n, day in enumerate(("2026-11-02", "2026-11-03", "2026-11-04")):  # the champion's first three days
        write_logs(lake, "jetson-07", day, seed=10 + n)
        write_logs(lake, "jetson-09", day, seed=20 + n)
    # a like day, where a device still on the previous version answers differently (counted, not compared)
    write_logs(lake, "jetson-07", "2026-11-10", seed=30)
    write_logs(lake, "jetson-09", "2026-11-10", seed=31)
    write_logs(lake, "jetson-11", "2026-11-10", seed=32, version="6", mix=SHIFTED_MIX, beta=(2, 3))
    # a shifted day: lower confidences, mostly pits
    write_logs(lake, "jetson-07", "2026-11-11", seed=40, mix=SHIFTED_MIX, beta=(2, 3))
    write_logs(lake, "jetson-09", "2026-11-11", seed=41, mix=SHIFTED_MIX, beta=(2, 3))

    def run(day):
        result = materialize([predictions.edge_predictions], instance=instance, partition_key=day, resources=resources)
        assert result.success  # a failed drift check is reported, it does not fail the run
        (event,) = result.get_asset_materialization_events()
        (check,) = result.get_asset_check_evaluations()
        return event.materialization.metadata, check

    # a reference day: the table is written, the check is not evaluated (and says why)
    meta, check = run("2026-11-02")
    assert check.passed and check.metadata["evaluated"].value is False
    assert "this day is one of them" in check.description
    assert meta["devices"].value == "jetson-07, jetson-09" and meta["requests"].value == 960
    assert meta["dropped_rows"].value == 0 and meta["files"].value == 32
    assert not lake.exists(lake_keys.PREDICTION_DRIFT_LATEST)
    day_table = lake.read_table(lake_keys.processed_predictions_key("2026-11-02"))
    assert day_table["request_id"].n_unique() == 960 and "latency_ms" not in day_table.columns
    assert meta["boxes"].value == day_table["class_name"].count()

    # the like day passes; the reference is the three first days (11-03 and 11-04 read from the logs)
    meta, check = run("2026-11-10")
    assert check.metadata["evaluated"].value is True, check.description
    assert check.passed, check.description
    assert check.metadata["reference_days"].value == "2026-11-02, 2026-11-03, 2026-11-04"
    assert check.metadata["model_version"].value == CHAMPION
    assert "| 6 | 480 |" in meta["model_versions"].value and "| 7 | 960 |" in meta["model_versions"].value
    latest = lake.read_json(lake_keys.PREDICTION_DRIFT_LATEST)
    assert (
        latest["passed"] and latest["day"] == "2026-11-10" and latest["report_id"] == check.metadata["report_id"].value
    )
    assert b"<!DOCTYPE html>" in lake.read_bytes(latest["html"])[:200]
    report = lake.read_json(latest["json"])
    assert report["reference_days"] == ["2026-11-02", "2026-11-03", "2026-11-04"] and report["drifted_columns"] == []
    assert (
        report["current_rows"]
        == lake.read_table(lake_keys.processed_predictions_key("2026-11-10"))
        .filter(pl.col("model_version") == CHAMPION)["class_name"]
        .count()
    )  # only the champion's boxes are compared

    tick = drift_sensor(build_sensor_context(instance=instance, resources={"lake": lake}))
    assert not tick.run_requests
    cursor = tick.cursor

    # the shifted day fails, its report becomes latest.json, and drift_sensor requests retraining once
    meta, check = run("2026-11-11")
    assert not check.passed and check.metadata["evaluated"].value is True
    latest = lake.read_json(lake_keys.PREDICTION_DRIFT_LATEST)
    assert not latest["passed"] and latest["day"] == "2026-11-11" and latest["drift_share"] == 1.0
    assert lake.read_json(latest["json"])["drifted_columns"] == ["confidence", "class_name"]
    assert lake.exists(lake_keys.prediction_drift_report_key(latest["report_id"], "html"))
    assert meta["confidence_quantiles"].value.count("|") > 6

    tick = drift_sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"lake": lake}))
    assert [r.job_name for r in tick.run_requests] == ["retraining_job"]
    assert tick.run_requests[0].tags["alumi/drift_report"] == latest["report_id"]
    again = drift_sensor(build_sensor_context(instance=instance, cursor=tick.cursor, resources={"lake": lake}))
    assert not again.run_requests and json.loads(again.cursor) == json.loads(tick.cursor)
    assert isinstance(again.skip_reason, SkipReason)

    # checking the older like day again writes its report but leaves latest.json on the newest day
    run("2026-11-10")
    assert lake.read_json(lake_keys.PREDICTION_DRIFT_LATEST)["report_id"] == latest["report_id"]


def test_without_a_champion_or_logs_the_day_is_empty_and_the_check_not_evaluated(lake):
    settings = PipelineSettings(classes=["scratch", "dent", "pit"])
    lake.write_bytes(lake_keys.predictions_hour_key("jetson-07", "2026-11-12", 3), b"not parquet")
    result = materialize(
        [predictions.edge_predictions],
        partition_key="2026-11-12",
        resources={"lake": lake, "pipeline_settings": settings},
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert (meta["requests"].value, meta["files"].value) == (0, 1)
    assert "predictions/jetson-07/2026-11-12/2026-11-12T03.parquet" in meta["unreadable_files"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["evaluated"].value is False and "no champion" in check.description
    assert lake.read_table(lake_keys.processed_predictions_key("2026-11-12")).is_empty()


def test_failed_image_and_prediction_reports_of_one_tick_share_one_retraining_run(lake):
    lake.write_json(lake_keys.DRIFT_LATEST, {"report_id": "img-1", "passed": False, "drift_share": 0.6})
    lake.write_json(lake_keys.PREDICTION_DRIFT_LATEST, {"report_id": "pred-1", "passed": False, "drift_share": 1.0})
    lake.write_json(lake_keys.PLANT_DRIFT_LATEST, {"report_id": "plant-1", "passed": True, "drift_share": 0.0})
    tick = drift_sensor(build_sensor_context(instance=DagsterInstance.ephemeral(), resources={"lake": lake}))
    assert [(r.job_name, r.run_key, r.tags["alumi/drift_report"]) for r in tick.run_requests] == [
        ("retraining_job", "drift:img-1+pred-1", "img-1,pred-1")
    ]
    assert json.loads(tick.cursor) == {
        lake_keys.DRIFT_LATEST: "img-1",
        lake_keys.PREDICTION_DRIFT_LATEST: "pred-1",
        lake_keys.PLANT_DRIFT_LATEST: "plant-1",
    }
