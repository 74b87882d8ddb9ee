"""Great Expectations suites for the vision tables: canonical labels and the processed image table."""

from __future__ import annotations

from alumi_pipelines.lib.expectations import SuiteResult, run_suite

_EPS = 1e-6


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

    return run_suite("labels", frame, expectations)


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

    return run_suite("images", frame, expectations)
