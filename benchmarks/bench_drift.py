"""Drift check time against the number of feature rows: bounded sample vs every row, in one run.

Feature rows come from synthetic renders (alumi_pipelines.lib.vision.synth, 160x160): per condition, a
multivariate normal is fitted to the features of real renders (sharpness on a log scale) and as many
rows as needed are drawn from it. The reference is "nominal"; the no-drift case draws another nominal
set, the drift case half "dark" and half "blurred". For each size the table shows the check's time with
sampling (``max_rows``) and on every row, the drift share of each, and whether they agree (same verdict
and same drifted columns).

    .venv/bin/python benchmarks/bench_drift.py                        # 10k, 50k, 200k
    .venv/bin/python benchmarks/bench_drift.py --rows 10000 50000 --full-limit 50000 --repeat 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOG_COLUMNS = ("sharpness",)


def _rendered(condition: str, count: int, first_seed: int):
    import numpy as np

    from alumi_pipelines.lib.drift import IMAGE_FEATURE_COLUMNS
    from alumi_pipelines.lib.vision.imaging import features
    from alumi_pipelines.lib.vision.synth import render_image

    rows = []
    for seed in range(first_seed, first_seed + count):
        f = features(render_image(seed, 160, 160, condition=condition).image)
        rows.append([np.log1p(f[c]) if c in LOG_COLUMNS else f[c] for c in IMAGE_FEATURE_COLUMNS])
    return np.array(rows)


class FeatureModel:
    """A multivariate normal per condition, fitted to rendered features."""

    def __init__(self, samples_per_condition: int):
        import numpy as np

        self.fits = {}
        for offset, condition in enumerate(("nominal", "dark", "blurred")):
            data = _rendered(condition, samples_per_condition, 10_000 * (offset + 1))
            self.fits[condition] = (data.mean(axis=0), np.cov(data, rowvar=False))

    def draw(self, mix: dict[str, float], n: int, seed: int, prefix: str):
        import numpy as np
        import polars as pl

        from alumi_pipelines.lib.drift import IMAGE_FEATURE_COLUMNS

        rng = np.random.default_rng(seed)
        parts = []
        for condition, share in mix.items():
            mean, cov = self.fits[condition]
            parts.append(rng.multivariate_normal(mean, cov, size=round(n * share)))
        data = np.vstack(parts)[:n]
        rng.shuffle(data)
        columns = {}
        for i, c in enumerate(IMAGE_FEATURE_COLUMNS):
            values = np.expm1(data[:, i]) if c in LOG_COLUMNS else data[:, i]
            columns[c] = np.clip(values, 0.0, 255.0**2 if c == "sharpness" else 255.0)
        return pl.DataFrame(
            {
                "image_id": [f"{prefix}-{i:07d}" for i in range(len(data))],
                "orig_width": np.full(len(data), 2448),
                "orig_height": np.full(len(data), 2048),
                **columns,
            }
        )


def _timed(reference, current, max_rows, repeat: int = 1):
    """Median seconds of ``repeat`` drift checks, and the (identical) result."""
    from alumi_pipelines.lib.drift import feature_drift

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = feature_drift(reference, current, max_rows=max_rows)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000, 200_000], help="feature rows per side")
    parser.add_argument("--max-rows", type=int, default=5000, help="sample bound given to feature_drift")
    parser.add_argument(
        "--full-limit", type=int, default=200_000, help="skip the full (unsampled) check above this many rows"
    )
    parser.add_argument("--repeat", type=int, default=3, help="checks per cell; the median time is shown")
    parser.add_argument("--fit-samples", type=int, default=150, help="renders per condition to fit the feature model")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = FeatureModel(args.fit_samples)
    print(f"fitted feature model on {3 * args.fit_samples} renders in {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    warm = model.draw({"nominal": 1.0}, 2000, seed=0, prefix="warm")
    _timed(warm, warm, None)  # imports evidently and plotly's lazy parts outside the timings
    print(f"evidently imported and warmed up in {time.perf_counter() - start:.1f} s", flush=True)

    header = (
        "| rows/side | case | sampled s | full s | sampled share | full share | sampled passed | full passed "
        "| agree |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- |"
    )
    lines = []
    for n in args.rows:
        reference = model.draw({"nominal": 1.0}, n, seed=n, prefix="ref")
        cases = {
            "no drift": model.draw({"nominal": 1.0}, n, seed=n + 1, prefix="cur"),
            "dark+blurred": model.draw({"dark": 0.5, "blurred": 0.5}, n, seed=n + 2, prefix="cur"),
        }
        for case, current in cases.items():
            t_sampled, sampled = _timed(reference, current, args.max_rows, args.repeat)
            full_time = full_share = full_passed = agree = "-"
            if n <= args.full_limit:
                t_full, full = _timed(reference, current, None, args.repeat)
                full_time, full_share, full_passed = f"{t_full:.2f}", f"{full.drift_share:.3f}", str(full.passed)
                same = sampled.passed == full.passed and sampled.drifted_columns == full.drifted_columns
                agree = "yes" if same else "NO"
            line = (
                f"| {n:,} | {case} | {t_sampled:.2f} | {full_time} | {sampled.drift_share:.3f} | {full_share} | "
                f"{sampled.passed} | {full_passed} | {agree} |"
            )
            lines.append(line)
            print(line, flush=True)
    print()
    print(
        f"max_rows={args.max_rows}; median of {args.repeat}; "
        "times include sampling, evidently's run and the HTML report"
    )
    print(header)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
