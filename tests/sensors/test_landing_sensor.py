"""landing_sensor: first tick, no-change tick, new-data tick; half-copied batches are not requested."""

import json

from dagster import DagsterInstance, SkipReason, build_sensor_context

from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.sensors.landing import landing_sensor


def _tick(instance, lake, cursor):
    ctx = build_sensor_context(instance=instance, cursor=cursor, resources={"lake": lake})
    return landing_sensor(ctx), ctx


def _batch(lake, name, files=2, marker=True):
    for i in range(files):
        lake.write_bytes(f"landing/{name}/L1/cam-a/img{i}.png", b"x")
    if marker:
        lake.write_bytes(f"landing/{name}/_batch.json", json.dumps({"format": "alumi"}).encode())


def test_ticks_request_each_batch_once(lake):
    instance = DagsterInstance.ephemeral()
    empty, _ = _tick(instance, lake, None)
    assert isinstance(empty, SkipReason)

    _batch(lake, "day-1")
    _batch(lake, "day-2", marker=False)  # still being copied
    first, _ = _tick(instance, lake, None)
    assert [r.partition_key for r in first.run_requests] == ["day-1"]
    assert first.dynamic_partitions_requests[0].partition_keys == ["day-1"]
    cursor = first.cursor

    again, _ = _tick(instance, lake, cursor)
    assert isinstance(again, SkipReason) and "day-2" in again.skip_message

    lake.write_bytes("landing/day-2/_batch.json", b'{"format": "alumi"}')
    _batch(lake, "day-3")
    instance.add_dynamic_partitions(landing_batches.name, ["day-1"])
    third, _ = _tick(instance, lake, cursor)
    assert sorted(r.partition_key for r in third.run_requests) == ["day-2", "day-3"]
    assert sorted(third.dynamic_partitions_requests[0].partition_keys) == ["day-2", "day-3"]
    assert set(json.loads(third.cursor)) == {"day-1", "day-2", "day-3"}
    run_keys = [r.run_key for r in first.run_requests + third.run_requests]
    assert len(set(run_keys)) == 3
