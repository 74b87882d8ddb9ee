"""corrections_sensor: validate new incoming files once; retrain once per N validated corrections since the champion."""

import polars as pl
from dagster import DagsterInstance, SkipReason, build_sensor_context

from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.sensors.corrections import corrections_sensor

SETTINGS = PipelineSettings(classes=["scratch"], retrain_corrections=3)


def _tick(lake, cursor):
    return corrections_sensor(
        build_sensor_context(
            instance=DagsterInstance.ephemeral(), cursor=cursor, resources={"lake": lake, "pipeline_settings": SETTINGS}
        )
    )


def _validated(lake, stamps):
    lake.write_table(
        lake_keys.CORRECTIONS_VALIDATED,
        pl.DataFrame({"correction_id": [f"c{i}" for i in range(len(stamps))], "timestamp": stamps}),
    )


def test_first_no_change_and_new_data_ticks(lake):
    first = _tick(lake, None)
    assert isinstance(first, SkipReason) and "0 validated" in first.skip_message

    lake.write_bytes("corrections/incoming/edge-cam1-1-2.jsonl", b"{}\n")
    tick = _tick(lake, None)
    assert [r.job_name for r in tick.run_requests] == ["corrections_job"]
    cursor = tick.cursor
    assert isinstance(_tick(lake, cursor), SkipReason)

    # champion trained at 2026-11-01T00:00Z (the champion record holds epoch seconds, as MlflowRegistry reports them)
    lake.write_json(lake_keys.CHAMPION_RECORD, {"version": "4", "trained_at": 1793491200.0})
    _validated(lake, ["2026-10-30T10:00:00+00:00", "2026-11-02T10:00:00+00:00", "2026-11-02T11:00:00+00:00"])
    assert isinstance(_tick(lake, cursor), SkipReason)  # only 2 are newer than the champion
    _validated(lake, ["2026-10-30T10:00:00+00:00"] + [f"2026-11-02T1{i}:00:00+00:00" for i in range(3)])
    tick = _tick(lake, cursor)
    assert [r.job_name for r in tick.run_requests] == ["retraining_job"]
    assert tick.run_requests[0].tags["alumi/corrections"] == "3"
    cursor = tick.cursor
    assert isinstance(_tick(lake, cursor), SkipReason)  # the same count never asks twice

    _validated(lake, [f"2026-11-03T0{i}:00:00+00:00" for i in range(6)])
    tick = _tick(lake, cursor)
    assert [r.job_name for r in tick.run_requests] == ["retraining_job"]  # another full batch of 3
