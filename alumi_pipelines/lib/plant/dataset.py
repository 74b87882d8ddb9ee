"""The risk dataset: per-part inspection outcomes, their join with part features, and the split by day.

``outcomes_from_detections`` counts defects per part and type (``DEFECT_TYPES``), ``join_outcomes`` adds
the binary ``y_<type>`` targets to the part features and reports every part it could not match, and
``time_split`` holds out the last production days (``DaySplit``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

# Defect types of the plant branch; the names match the vision branch's default classes.
DEFECT_TYPES: tuple[str, ...] = ("scratch", "dent", "pit", "crack", "stain")

ALLOYS: tuple[str, ...] = ("6063", "6082", "5754", "1050")

UNMATCHED_COLUMNS: tuple[str, ...] = ("part_id", "side", "reason")


class OutcomeSchemaError(ValueError):
    """An outcome table missing a required column."""


def count_column(defect_type: str) -> str:
    """Outcome column holding the defect count of one type."""
    return f"n_{defect_type}"


def target_column(defect_type: str) -> str:
    """Dataset column holding the binary target of one type."""
    return f"y_{defect_type}"


def outcomes_from_detections(
    detections: pl.DataFrame,
    inspected_parts: Iterable[str] = (),
    *,
    class_column: str = "class_name",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-part defect counts (part_id, n_<type>...) from one row per detected defect.

    ``inspected_parts`` lists parts inspected without any detection (they get zero counts). Rows
    whose class is not a DEFECT_TYPE or whose part_id is missing are returned as rejects with a reason.
    """
    import polars as pl

    for column in ("part_id", class_column):
        if column not in detections.columns:
            raise OutcomeSchemaError(f"detections: missing column {column!r} (required)")
    rows = detections.select(
        pl.col("part_id").cast(pl.Utf8), pl.col(class_column).cast(pl.Utf8).alias("class_name")
    ).rechunk()  # pl.format below needs one chunk (polars 2.1)
    reason = (
        pl.when(pl.col("part_id").is_null() | (pl.col("part_id") == ""))
        .then(pl.lit("missing part_id"))
        .when(~pl.col("class_name").is_in(list(DEFECT_TYPES)))
        .then(pl.format("class '{}' is not a plant defect type", pl.col("class_name")))
    )
    rows = rows.with_columns(reason.otherwise(None).alias("reason"))
    good = rows.filter(pl.col("reason").is_null())
    parts = pl.concat(
        [good.select("part_id"), pl.DataFrame({"part_id": list(inspected_parts)}, schema={"part_id": pl.Utf8})]
    ).unique()
    counts = good.group_by("part_id").agg(
        (pl.col("class_name") == t).sum().cast(pl.Int64).alias(count_column(t)) for t in DEFECT_TYPES
    )
    outcomes = parts.join(counts, on="part_id", how="left").with_columns(
        pl.col(count_column(t)).fill_null(0) for t in DEFECT_TYPES
    )
    return outcomes.sort("part_id"), rows.filter(pl.col("reason").is_not_null())


def join_outcomes(features: pl.DataFrame, outcomes: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(dataset, unmatched): features joined with outcomes per part, plus binary y_<type> targets.

    Parts on one side only, outcome rows repeated for one part, and null or negative counts are
    returned in ``unmatched`` (part_id, side, reason) instead of the dataset.
    """
    import polars as pl

    missing = [c for c in ("part_id", *map(count_column, DEFECT_TYPES)) if c not in outcomes.columns]
    if missing:
        raise OutcomeSchemaError(f"outcomes: missing column(s) {', '.join(map(repr, missing))} (required)")
    if features["part_id"].is_duplicated().any():
        raise ValueError("features: part_id must be unique (one row per part)")
    counts = [count_column(t) for t in DEFECT_TYPES]
    out = outcomes.select(pl.col("part_id").cast(pl.Utf8), *[pl.col(c).cast(pl.Int64) for c in counts]).rechunk()
    reason = pl.when(pl.col("part_id").is_duplicated()).then(
        pl.format("part_id appears {} times in the outcomes", pl.len().over("part_id"))
    )
    for c in counts:
        reason = reason.when(pl.col(c).is_null()).then(pl.lit(f"null {c}"))
        reason = reason.when(pl.col(c) < 0).then(pl.format(f"negative {c} ({{}})", pl.col(c)))
    out = out.with_columns(reason.otherwise(None).alias("reason"))
    bad = out.filter(pl.col("reason").is_not_null()).unique("part_id", keep="first", maintain_order=True).rechunk()
    good = out.filter(pl.col("reason").is_null()).drop("reason")
    bad_ids = bad["part_id"].implode()

    dataset = features.join(good, on="part_id", how="inner").with_columns(
        (pl.col(count_column(t)) > 0).cast(pl.Int8).alias(target_column(t)) for t in DEFECT_TYPES
    )
    sort_keys = ["day", "part_id"] if "day" in dataset.columns else ["part_id"]
    features_only = features.filter(~pl.col("part_id").is_in(out["part_id"].implode())).select(
        "part_id", pl.lit("features").alias("side"), pl.lit("no inspection outcome for this part").alias("reason")
    )
    features_bad = (
        features.filter(pl.col("part_id").is_in(bad_ids))
        .select("part_id")
        .join(bad.select("part_id", "reason"), on="part_id")
        .select("part_id", pl.lit("outcomes").alias("side"), "reason")
    )
    outcomes_only = good.filter(~pl.col("part_id").is_in(features["part_id"].implode())).select(
        "part_id",
        pl.lit("outcomes").alias("side"),
        pl.lit("no sensor features for this part_id (unknown part)").alias("reason"),
    )
    bad_unknown = bad.filter(~pl.col("part_id").is_in(features["part_id"].implode())).select(
        "part_id", pl.lit("outcomes").alias("side"), pl.format("{}; no sensor features for this part_id", "reason")
    )
    unmatched = pl.concat([features_only, features_bad, outcomes_only, bad_unknown]).sort("side", "part_id")
    return dataset.sort(sort_keys), unmatched.select(UNMATCHED_COLUMNS)


@dataclass(frozen=True)
class DaySplit:
    """Days of each split, in time order: train, then validation, then the hold-out test days."""

    train_days: tuple[date, ...]
    val_days: tuple[date, ...]
    test_days: tuple[date, ...]

    def name_of(self, day: date) -> str | None:
        """Split name of a day, None for a day in no split."""
        for name, days in (("train", self.train_days), ("val", self.val_days), ("test", self.test_days)):
            if day in days:
                return name
        return None

    def assign(self, dataset: pl.DataFrame) -> pl.DataFrame:
        """The dataset with a ``split`` column (train | val | test)."""
        import polars as pl

        expr = pl.when(pl.col("day").is_in(list(self.train_days))).then(pl.lit("train"))
        expr = expr.when(pl.col("day").is_in(list(self.val_days))).then(pl.lit("val"))
        expr = expr.when(pl.col("day").is_in(list(self.test_days))).then(pl.lit("test"))
        return dataset.with_columns(expr.otherwise(None).alias("split"))

    def rows(self, dataset: pl.DataFrame, name: str) -> pl.DataFrame:
        """The rows of one split ("train", "val" or "test")."""
        import polars as pl

        days = {"train": self.train_days, "val": self.val_days, "test": self.test_days}
        if name not in days:
            raise ValueError(f"split {name!r}: must be one of train, val, test")
        return dataset.filter(pl.col("day").is_in(list(days[name])))

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "train_days": [d.isoformat() for d in self.train_days],
            "val_days": [d.isoformat() for d in self.val_days],
            "test_days": [d.isoformat() for d in self.test_days],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[str]]) -> DaySplit:
        return cls(*(tuple(date.fromisoformat(d) for d in data[k]) for k in ("train_days", "val_days", "test_days")))


def time_split(dataset: pl.DataFrame, *, val_days: int = 1, test_days: int = 1) -> DaySplit:
    """Split by production day: the last ``test_days`` are held out, the ``val_days`` before them validate."""
    if "day" not in dataset.columns:
        raise ValueError("time_split: dataset has no 'day' column")
    if val_days < 1 or test_days < 1:
        raise ValueError("time_split: val_days and test_days must be at least 1")
    days = sorted(d for d in dataset["day"].unique().to_list() if d is not None)
    needed = val_days + test_days + 1
    if len(days) < needed:
        raise ValueError(f"time_split: {len(days)} day(s) of data, need at least val_days + test_days + 1 = {needed}")
    n_train = len(days) - val_days - test_days
    return DaySplit(tuple(days[:n_train]), tuple(days[n_train : n_train + val_days]), tuple(days[n_train + val_days :]))
