"""Code-location load time: `dagster definitions validate` on alumi_pipelines vs a one-asset module.

Target: <= 1.5x the one-asset module. Both are measured in the same run, alternating.

    .venv/bin/python benchmarks/bench_code_location.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ONE_ASSET = """
import dagster as dg

@dg.asset
def one():
    return 1

defs = dg.Definitions(assets=[one])
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    dagster = Path(sys.executable).parent / "dagster"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "one_asset_module.py").write_text(ONE_ASSET)
        env = {**os.environ, "DAGSTER_HOME": tmp, "PYTHONPATH": f"{tmp}{os.pathsep}{REPO}", "ALUMI_HOME": tmp}
        times: dict[str, list[float]] = {"one-asset module": [], "alumi_pipelines.definitions": []}
        for _ in range(args.repeat):
            for name, module in (
                ("one-asset module", "one_asset_module"),
                ("alumi_pipelines.definitions", "alumi_pipelines.definitions"),
            ):
                t = time.perf_counter()
                subprocess.run(
                    [dagster, "definitions", "validate", "-m", module],
                    env=env,
                    cwd=tmp,
                    check=True,
                    capture_output=True,
                )
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["one-asset module"])
    print(f"\n`dagster definitions validate`, median of {args.repeat}")
    print(f"{'module':<30} {'seconds':>8} {'ratio':>7}")
    for name, ts in times.items():
        print(f"{name:<30} {statistics.median(ts):>8.2f} {statistics.median(ts) / base:>6.2f}x")
    print("target: <= 1.50x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
