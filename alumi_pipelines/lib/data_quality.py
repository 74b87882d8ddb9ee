"""Great Expectations suites for the lake's tables, run on an ephemeral context (no files, no network)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

_EPS = 1e-6


@dataclass
class SuiteResult:
    success: bool
    failures: list[dict] = field(default_factory=list)  # expectation, column, unexpected_count, examples
    evaluated: int = 0

    def summary(self) -> str:
        if self.success:
            return f"all {self.evaluated} expectations met"
        return "; ".join(
            f"{f['expectation']}({f['column']}): {f['unexpected_count']} unexpected, e.g. {f['examples'][:3]}"
            for f in self.failures
        )


def _run_suite(name: str, frame, expectations) -> SuiteResult:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for expectation in expectations(gx.expectations):
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame})
    failures = [
        {
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column", ""),
            "unexpected_count": int(r.result.get("unexpected_count") or 0),
            "examples": list(r.result.get("partial_unexpected_list") or [])[:5],
        }
        for r in result.results
        if not r.success
    ]
    return SuiteResult(success=bool(result.success), failures=failures, evaluated=len(result.results))


def validate_labels(labels, classes: list[str]) -> SuiteResult:
    """Canonical labels: known classes and ids, normalised boxes inside the image with positive size."""
    frame = labels.to_pandas()
    frame["x_min"] = frame["x_center"] - frame["width"] / 2
    frame["x_max"] = frame["x_center"] + frame["width"] / 2
    frame["y_min"] = frame["y_center"] - frame["height"] / 2
    frame["y_max"] = frame["y_center"] + frame["height"] / 2

    def expectations(E):
        yield E.ExpectColumnValuesToNotBeNull(column="image_id")
        yield E.ExpectColumnValuesToBeInSet(column="class_name", value_set=list(classes))
        yield E.ExpectColumnValuesToBeBetween(column="class_id", min_value=0, max_value=len(classes) - 1)
        for col in ("width", "height"):
            yield E.ExpectColumnValuesToBeBetween(column=col, min_value=0, max_value=1, strict_min=True)
        for col in ("x_min", "y_min", "x_max", "y_max"):
            yield E.ExpectColumnValuesToBeBetween(column=col, min_value=-_EPS, max_value=1 + _EPS)

    return _run_suite("labels", frame, expectations)


def validate_image_table(features, min_side: int) -> SuiteResult:
    """Processed image features: unique ids, original sizes at least min_side, features in range."""
    frame = features.to_pandas()

    def expectations(E):
        yield E.ExpectColumnValuesToBeUnique(column="image_id")
        for col in ("orig_width", "orig_height"):
            yield E.ExpectColumnValuesToBeBetween(column=col, min_value=min_side)
        for col in ("brightness", "mean_b", "mean_g", "mean_r", "saturation"):
            yield E.ExpectColumnValuesToBeBetween(column=col, min_value=0, max_value=255)
        yield E.ExpectColumnValuesToBeBetween(column="channels", min_value=1, max_value=4)

    return _run_suite("images", frame, expectations)
