"""Great Expectations suites for the plant sensor tables (clean samples and per-part features).

Same ephemeral-context runner (lib/expectations) as the vision suites. Per-part rules that GE has no expectation for
(timestamps strictly increasing within a part, min <= max) become helper columns checked with plain
range expectations, so a failure still names the rule and shows example values.
"""

from __future__ import annotations

from alumi_pipelines.lib.expectations import SuiteResult, run_suite
from alumi_pipelines.lib.plant.dataset import ALLOYS
from alumi_pipelines.lib.plant.samples import PLAUSIBLE, SIGNALS

# Below this share of present values a signal counts as down for the batch (dropouts are allowed, not outages).
MIN_PRESENT_SHARE = 0.8
SHIFTS = ("A", "B", "C")


def validate_plant_samples(clean, min_present_share: float = MIN_PRESENT_SHARE) -> SuiteResult:
    """Clean samples: ids present, known alloys, values physically plausible, few dropouts, timestamps
    unique and strictly increasing within each part."""
    import polars as pl

    step = (pl.col("timestamp").diff().over("part_id").dt.total_microseconds() / 1e6).alias("seconds_since_previous")
    frame = (
        clean.sort("part_id", "timestamp", maintain_order=True)
        .with_columns(step)
        .with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ").alias("timestamp"))
        .to_pandas()
    )

    def expectations(E):
        for col in ("timestamp", "part_id", "line", "alloy"):
            yield E.ExpectColumnValuesToNotBeNull(column=col)
        yield E.ExpectColumnValuesToBeInSet(column="alloy", value_set=list(ALLOYS))
        yield E.ExpectColumnValuesToBeInSet(column="shift", value_set=list(SHIFTS))  # nulls are ignored
        yield E.ExpectCompoundColumnsToBeUnique(column_list=["part_id", "timestamp"])
        yield E.ExpectColumnValuesToBeBetween(column="seconds_since_previous", min_value=0, strict_min=True)
        for sig in SIGNALS:
            lo, hi = PLAUSIBLE[sig]
            yield E.ExpectColumnValuesToBeBetween(column=sig, min_value=lo, max_value=hi)
            yield E.ExpectColumnValuesToNotBeNull(column=sig, mostly=min_present_share)

    return run_suite("plant_samples", frame, expectations)


def validate_plant_features(features) -> SuiteResult:
    """Per-part features: one row per part, ids and day present, shares in [0, 1], means plausible,
    spreads non-negative, min <= max."""
    import polars as pl

    spans = [(pl.col(f"{s}__max") - pl.col(f"{s}__min")).alias(f"{s}__span") for s in SIGNALS]
    frame = features.with_columns(spans).with_columns(pl.col("start").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_pandas()

    def expectations(E):
        yield E.ExpectColumnValuesToBeUnique(column="part_id")
        for col in ("part_id", "alloy", "day", "start", "n_samples", "duration_s"):
            yield E.ExpectColumnValuesToNotBeNull(column=col)
        yield E.ExpectColumnValuesToBeInSet(column="alloy", value_set=list(ALLOYS))
        yield E.ExpectColumnValuesToBeBetween(column="n_samples", min_value=1)
        yield E.ExpectColumnValuesToBeBetween(column="duration_s", min_value=0)
        for sig in SIGNALS:
            lo, hi = PLAUSIBLE[sig]
            yield E.ExpectColumnValuesToBeBetween(column=f"{sig}__mean", min_value=lo, max_value=hi)
            yield E.ExpectColumnValuesToNotBeNull(column=f"{sig}__mean", mostly=0.9)
            yield E.ExpectColumnValuesToBeBetween(column=f"{sig}__std", min_value=0)
            yield E.ExpectColumnValuesToBeBetween(column=f"{sig}__span", min_value=0)
            for share in ("frac_outside", "dropout"):
                yield E.ExpectColumnValuesToBeBetween(column=f"{sig}__{share}", min_value=0, max_value=1)

    return run_suite("plant_features", frame, expectations)
