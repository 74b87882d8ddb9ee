"""Per-part feature throughput: polars (part_features) against the same computation in pandas.

Simulates a plant (about 1.1 million 1 Hz samples by default), normalises its historian files,
then times both implementations on the same clean samples in the same run, checks they agree, and
prints a table. Usage:

    .venv/bin/python benchmarks/bench_plant_features.py [--days 6] [--parts-per-day 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, date, datetime

import numpy as np


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=6)
    parser.add_argument("--parts-per-day", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import pandas as pd
    import polars as pl

    from alumi_pipelines.lib.plant.features import FEATURE_COLUMNS, part_features, part_features_pandas
    from alumi_pipelines.lib.plant.samples import normalise_files
    from alumi_pipelines.lib.plant.sim import simulate_days

    start = time.perf_counter()
    plant = simulate_days(date(2026, 3, 2), args.days, args.parts_per_day, args.seed)
    files = plant.historian_files()
    prepared = time.perf_counter() - start
    normalise_times, result = _timed(
        lambda: normalise_files(files, known_parts=plant.known_parts, now=datetime(2027, 1, 1, tzinfo=UTC)),
        args.repeats,
    )
    clean = result.clean
    clean_pandas = clean.to_pandas()
    n_samples, n_parts = clean.height, clean["part_id"].n_unique()

    polars_times, polars_features = _timed(lambda: part_features(clean), args.repeats)
    pandas_times, pandas_features = _timed(lambda: part_features_pandas(clean_pandas), args.repeats)

    expected = polars_features.select(FEATURE_COLUMNS).to_numpy()
    got = pandas_features[list(FEATURE_COLUMNS)].to_numpy(float)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert pandas_features["part_id"].tolist() == polars_features["part_id"].to_list()

    rows = [
        ("part_features (polars, lazy)", polars_times),
        ("part_features_pandas (pandas)", pandas_times),
        ("normalise_files (polars, CSV in)", normalise_times),
    ]
    pandas_best = min(pandas_times)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"polars {pl.__version__} ({pl.thread_pool_size()} threads), pandas {pd.__version__}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}"
    )
    print(
        f"{n_samples:,} samples, {n_parts:,} parts, {len(files)} historian files "
        f"(simulated and exported in {prepared:.1f} s)"
    )
    print(f"features agree: max |polars - pandas| = {np.nanmax(np.abs(got - expected)):.3g}")
    print()
    print(f"| {'step':<34} | {'best s':>7} | {'median s':>8} | {'samples/s':>12} | {'vs pandas features':>18} |")
    print(f"| {'-' * 34} | {'-' * 7}:| {'-' * 8}:| {'-' * 12}:| {'-' * 18}:|")
    for name, times in rows:
        best = min(times)
        if "pandas" in name:
            ratio = "baseline"
        else:
            ratio = f"{pandas_best / best:.1f}x faster" if "features" in name else "-"
        print(
            f"| {name:<34} | {best:>7.3f} | {statistics.median(times):>8.3f} | {n_samples / best:>12,.0f} "
            f"| {ratio:>18} |"
        )


if __name__ == "__main__":
    main()
