"""Great Expectations on an ephemeral context (no files, no network): the suite runner both branches use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


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


def run_suite(name: str, frame, expectations) -> SuiteResult:
    """Validate ``frame`` against the expectations ``expectations(gx.expectations)`` returns."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for expectation in expectations(gx.expectations):
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite)
    )
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
