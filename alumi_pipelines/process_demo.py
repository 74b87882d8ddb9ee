"""Simulated plant data into landing/process/, as the historian and the QA station would drop it.

``write_process_demo`` backs ``alumi process-demo-data``; ``process_days_tags`` gives the
``dagster job execute --tags`` that run ``process_risk_job`` over every landed day.
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Iterable

from alumi_pipelines.resources import process_layout as layout
from alumi_pipelines.resources.lake import Lake


def _csv(frame) -> bytes:
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


def write_process_demo(
    lake: Lake,
    start: dt.date,
    days: int,
    parts_per_day: int,
    seed: int,
    *,
    faults: Iterable[str] = (),
    fault_file: str | None = None,
    today: dt.date | None = None,
) -> list[str]:
    """Simulate ``days`` production days from ``start`` and land them; returns the lake keys written.

    Per day: one historian CSV per line, the production plan and the QA outcomes. ``faults`` (names in
    process_sim.FAULTS) go into ``fault_file`` (``<day>/historian_<line>.csv``, default the first file).
    Every simulated day must be over already (UTC): samples stamped in the future are quarantined.
    """
    import polars as pl

    from alumi_pipelines.lib.process_sim import simulate_days

    today = today or dt.datetime.now(dt.timezone.utc).date()
    if days < 1:
        raise ValueError(f"process demo: days={days}: must be at least 1")
    last = start + dt.timedelta(days=days - 1)
    if last >= today:
        raise ValueError(f"process demo: the last simulated day {last} is not over yet (today is {today} UTC); "
                         f"start on {today - dt.timedelta(days=days)} or earlier")
    plant = simulate_days(start, days, parts_per_day, seed)
    keys = []
    for name, data in plant.historian_files(faults, fault_file).items():
        keys.append(lake.write_bytes(f"{layout.PROCESS_LANDING}/{name}", data))
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        plan = plant.parts.filter(pl.col("day") == day).select(
            "part_id", "line", "alloy",
            pl.col("start").dt.strftime("%Y-%m-%dT%H:%M:%SZ"), pl.col("end").dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "n_samples",
        )
        outcomes = plant.outcomes.filter(pl.col("day") == day)
        keys.append(lake.write_bytes(layout.process_landing_key(day.isoformat(), layout.PLAN_FILE), _csv(plan)))
        keys.append(lake.write_bytes(layout.process_landing_key(day.isoformat(), layout.OUTCOMES_FILE), _csv(outcomes)))
    return sorted(keys)


def process_days_tags(lake: Lake) -> dict[str, str]:
    """Partition-range tags covering every day under landing/process/."""
    return layout.partition_range_tags(layout.landing_days(lake))
