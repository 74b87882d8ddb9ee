"""Incremental cost: time to ingest + process one new day when the lake holds 1 day vs 20 days.

Runs the same code path as the partitioned assets (one batch = one partition). Target: within 20 %.

    .venv/bin/python benchmarks/bench_incremental.py [--images 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60, help="images per day")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from alumi_pipelines.assets.processed import process_batch
    from alumi_pipelines.assets.raw import ingest_landing_batch, write_landing_file
    from alumi_pipelines.lib.vision.synth import write_landing_batch
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import DEFAULT_CLASSES

    settings = PipelineSettings(classes=list(DEFAULT_CLASSES))
    start = dt.date(2026, 10, 1)

    def land(lake, day_index):
        day = start + dt.timedelta(days=day_index)
        batch = f"day-{day.isoformat()}"
        write_landing_batch(
            lambda k, d: write_landing_file(lake, batch, k, d),
            batch,
            args.images,
            day=day,
            seed=day_index,
            size=args.size,
        )
        return batch

    def one_day(lake, batch):
        t = time.perf_counter()
        ingest_landing_batch(lake, batch, settings)
        process_batch(lake, batch, settings)
        return time.perf_counter() - t

    results: dict[str, list[float]] = {"1 day in lake": [], "20 days in lake": []}
    with tempfile.TemporaryDirectory() as tmp:
        small = Lake(base_uri=str(Path(tmp) / "small"))
        big = Lake(base_uri=str(Path(tmp) / "big"))
        one_day(small, land(small, 0))
        for i in range(20):
            one_day(big, land(big, i))
        # alternate the two lakes so a change in machine load hits both alike
        for r in range(args.repeat):
            results["1 day in lake"].append(one_day(small, land(small, 100 + r)))
            results["20 days in lake"].append(one_day(big, land(big, 100 + r)))
    base = statistics.median(results["1 day in lake"])
    print(f"\n{args.images} images/day at {args.size}px, median of {args.repeat}")
    print(f"{'lake holds':<18} {'new day (s)':>12} {'ratio':>7}")
    for name, times in results.items():
        print(f"{name:<18} {statistics.median(times):>12.3f} {statistics.median(times) / base:>6.2f}x")
    print("target: 20 days within 1.20x of 1 day")
    return 0


if __name__ == "__main__":
    sys.exit(main())
