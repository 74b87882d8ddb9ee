"""The review queue: which images QA reviewers should look at next in the labelling tool, and why.

Candidates come from three sources: frames an edge device kept (``edge_candidates``), images where the champion's
predictions disagree with the gold labels (``disagreements`` → ``disagreement_candidates``) and images whose
features are far from the training set's (``drift_outliers``). ``select_queue`` keeps one row per image (its
highest-priority reason, ``REASONS`` order) and fills the per-run budget: every flagged image first, then one image
per source in turn (edge, disagreement, drift), so no source starves the others. Same input, same queue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import polars as pl

from alumi_pipelines.lib.boxes import iou_cxcywh

REASONS = (
    "flagged",
    "held_out",
    "missed_boxes",
    "class_changes",
    "extra_boxes",
    "uncertain",
    "rare_class",
    "drift_outlier",
    "random",
)  # priority order, highest first
SOURCES = {
    "flagged": "edge",
    "uncertain": "edge",
    "rare_class": "edge",
    "random": "edge",
    "held_out": "labels",
    "missed_boxes": "disagreement",
    "class_changes": "disagreement",
    "extra_boxes": "disagreement",
    "drift_outlier": "drift",
}
SOURCE_ORDER = ("edge", "labels", "disagreement", "drift")  # the round-robin order of select_queue

CANDIDATE_SCHEMA = {"image_id": pl.Utf8, "reason": pl.Utf8, "score": pl.Float64, "detail": pl.Utf8}
QUEUE_SCHEMA = {
    "rank": pl.Int64,
    "image_id": pl.Utf8,
    "reason": pl.Utf8,
    "reasons": pl.Utf8,
    "source": pl.Utf8,
    "score": pl.Float64,
    "detail": pl.Utf8,
}
DISAGREEMENT_SCHEMA = {
    "image_id": pl.Utf8,
    "labels": pl.Int64,
    "predicted": pl.Int64,
    "missed": pl.Int64,
    "extra": pl.Int64,
    "class_changes": pl.Int64,
    "score": pl.Float64,
    "detail": pl.Utf8,
}

EDGE_REASONS = ("flagged", "uncertain", "rare_class", "random")  # the capture reasons the queue knows, by priority
EDGE_ALIASES = {"low_confidence": "uncertain"}
EDGE_SCORES = {"flagged": 3.0, "uncertain": 2.0, "rare_class": 2.0, "random": 0.5}

MIN_REFERENCE = 5  # reference values a drift column needs to be scored
_BOX = ("x_center", "y_center", "width", "height")


def _require(table: pl.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the {what} table has no column {', '.join(missing)} (columns: {table.columns})")


# -- disagreements between labels and predictions -------------------------------------------------
def _boxes_by_image(table: pl.DataFrame, ids: list[str], order: Sequence) -> dict[str, list[tuple]]:
    """image_id → [(class_name, x_center, y_center, width, height)], boxes in ``order`` (row order is irrelevant)."""
    rows = (
        table.select("image_id", pl.col("class_name").cast(pl.Utf8), *[pl.col(c).cast(pl.Float64) for c in _BOX])
        .filter(
            pl.col("image_id").is_in(pl.Series(ids, dtype=pl.Utf8).implode())
            & pl.all_horizontal(pl.col(*_BOX).is_not_null())
        )
        .with_columns(pl.col("class_name").fill_null(""))
        .sort("image_id", *order)
    )
    grouped: dict[str, list[tuple]] = {}
    for row in rows.iter_rows():
        grouped.setdefault(row[0], []).append(row[1:])
    return grouped


def greedy_matches(labels: list[tuple], predictions: list[tuple], iou: float) -> list[tuple[int, int]]:
    """(label index, prediction index) pairs: IoU descending over all pairs with IoU ≥ ``iou`` (and > 0)."""
    pairs = []
    for i, label in enumerate(labels):
        for j, prediction in enumerate(predictions):
            value = iou_cxcywh(label[1:], prediction[1:])
            if value > 0 and value >= iou:
                pairs.append((-value, i, j))
    pairs.sort()
    used_labels: set[int] = set()
    used_predictions: set[int] = set()
    matches = []
    for _, i, j in pairs:
        if i not in used_labels and j not in used_predictions:
            used_labels.add(i)
            used_predictions.add(j)
            matches.append((i, j))
    return matches


def _names(names: Iterable[str]) -> str:
    """``dent ×2, scratch``: sorted class names, repeats counted."""
    return ", ".join(n if k == 1 else f"{n} ×{k}" for n, k in sorted(Counter(names).items()))


def _disagreement_detail(missed: list[str], extra: list[str], changes: list[str]) -> str:
    parts = []
    if missed:
        parts.append(f"{len(missed)} missed ({_names(missed)})")
    if extra:
        parts.append(f"{len(extra)} extra ({_names(extra)})")
    if changes:
        plural = "" if len(changes) == 1 else "s"
        parts.append(f"{len(changes)} class change{plural} ({_names(changes)})")
    return ", ".join(parts) or "agrees"


def disagreements(
    labels: pl.DataFrame,
    predictions: pl.DataFrame,
    image_ids: Sequence[str],
    *,
    iou: float = 0.5,
    min_confidence: float = 0.25,
) -> pl.DataFrame:
    """How far the predictions of each image in ``image_ids`` are from its labels (``DISAGREEMENT_SCHEMA``).

    ``labels``: canonical label rows (image_id, class_name, x_center, y_center, width, height, normalised; other
    columns are ignored; a row without coordinates is not a box). ``predictions``: image_id, class_name,
    confidence and the same box columns; predictions below ``min_confidence`` are ignored.

    Boxes are matched greedily, class-agnostic: all label × prediction pairs with IoU ≥ ``iou`` by IoU descending
    (ties by box order), each box at most once. One row per image id, in ``image_ids`` order (repeats dropped),
    images without labels or predictions included: ``missed`` labels no prediction matched, ``extra`` predictions
    no label matched, ``class_changes`` matched pairs whose classes differ (shown label→prediction), ``score`` the
    sum of the three and ``detail`` the summary, e.g. ``"2 missed (dent, scratch), 1 extra (pit)"`` or ``"agrees"``.
    """
    _require(labels, ("image_id", "class_name", *_BOX), "labels")
    _require(predictions, ("image_id", "class_name", "confidence", *_BOX), "predictions")
    ids = list(dict.fromkeys(image_ids))
    truth = _boxes_by_image(labels, ids, ("class_name", *_BOX))
    confident = predictions.filter(pl.col("confidence").cast(pl.Float64) >= min_confidence)
    predicted = _boxes_by_image(confident, ids, ("class_name", *_BOX))

    rows = []
    for image_id in ids:
        boxes, guesses = truth.get(image_id, []), predicted.get(image_id, [])
        matches = greedy_matches(boxes, guesses, iou)
        matched_labels = {i for i, _ in matches}
        matched_predictions = {j for _, j in matches}
        missed = [b[0] for i, b in enumerate(boxes) if i not in matched_labels]
        extra = [p[0] for j, p in enumerate(guesses) if j not in matched_predictions]
        changes = [f"{boxes[i][0]}→{guesses[j][0]}" for i, j in matches if boxes[i][0] != guesses[j][0]]
        rows.append(
            (
                image_id,
                len(boxes),
                len(guesses),
                len(missed),
                len(extra),
                len(changes),
                float(len(missed) + len(extra) + len(changes)),
                _disagreement_detail(missed, extra, changes),
            )
        )
    return pl.DataFrame(rows, schema=DISAGREEMENT_SCHEMA, orient="row")


def disagreement_candidates(table: pl.DataFrame) -> pl.DataFrame:
    """Review candidates (``CANDIDATE_SCHEMA``) from :func:`disagreements`: the images whose score is above 0.

    The reason is the kind with the largest count (ties in the order missed, class changes, extra):
    ``missed_boxes``, ``class_changes`` or ``extra_boxes``; score and detail are carried over. Input order is kept.
    """
    _require(table, ("image_id", "missed", "class_changes", "extra", "score", "detail"), "disagreements")
    missed, changes, extra = pl.col("missed"), pl.col("class_changes"), pl.col("extra")
    reason = (
        pl.when((missed >= changes) & (missed >= extra))
        .then(pl.lit("missed_boxes"))
        .when(changes >= extra)
        .then(pl.lit("class_changes"))
        .otherwise(pl.lit("extra_boxes"))
    )
    return table.filter(pl.col("score") > 0).select(
        pl.col("image_id").cast(pl.Utf8),
        reason.alias("reason"),
        pl.col("score").cast(pl.Float64),
        pl.col("detail").cast(pl.Utf8),
    )


# -- drift outliers ---------------------------------------------------------------------------------
def _column_scale(values: pl.Series) -> tuple[str, float, float, float] | None:
    """(centre name, centre, scale, factor) so that z = factor * (x - centre) / scale; None when unscorable."""
    values = values.drop_nulls()
    if values.len() < MIN_REFERENCE:
        return None
    median = float(values.median())
    mad = float((values - median).abs().median())
    if mad > 0:
        return "median", median, mad, 0.6745
    std = values.std()
    if std is not None and float(std) > 0:
        return "mean", float(values.mean()), float(std), 1.0
    return None


def drift_outliers(
    features: pl.DataFrame, reference: pl.DataFrame, columns: Sequence[str], *, threshold: float = 3.5
) -> pl.DataFrame:
    """Review candidates (``CANDIDATE_SCHEMA``): the images whose features are far from the reference's.

    Each of ``columns`` (e.g. brightness, contrast, sharpness) is scored by a robust z-score against
    ``reference``: ``0.6745 * (x - median) / MAD``; when the MAD is 0, ``(x - mean) / std``; a column whose
    reference has both 0, or fewer than 5 values, is skipped. Null (and NaN) values are ignored. An image is an
    outlier when its largest |z| is at least ``threshold``: reason ``drift_outlier``, score that |z| (3 decimals),
    detail the worst column, e.g. ``"brightness z=+4.21 (reference median 0.512)"``. Input order is kept.
    """
    _require(features, ("image_id", *columns), "features")
    _require(reference, columns, "reference")
    empty = pl.DataFrame(schema=CANDIDATE_SCHEMA)
    scales = {}
    for column in columns:
        scale = _column_scale(reference[column].cast(pl.Float64).fill_nan(None))
        if scale is not None:
            scales[column] = scale
    if not scales or features.is_empty():
        return empty

    zs = features.select(
        pl.col("image_id").cast(pl.Utf8),
        *[
            (factor * (pl.col(c).cast(pl.Float64).fill_nan(None) - centre) / spread).alias(c)
            for c, (_, centre, spread, factor) in scales.items()
        ],
    )
    rows = []
    for row in zs.iter_rows(named=True):
        scored = [(abs(row[c]), c) for c in scales if row[c] is not None]
        if not scored:
            continue
        worst_abs, worst = max(scored, key=lambda s: s[0])  # max keeps the first column on a tie
        if worst_abs < threshold:
            continue
        kind, centre, _, _ = scales[worst]
        detail = f"{worst} z={row[worst]:+.2f} (reference {kind} {centre:.4g})"
        rows.append((row["image_id"], "drift_outlier", round(worst_abs, 3), detail))
    return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA, orient="row") if rows else empty


# -- edge captures ----------------------------------------------------------------------------------
def edge_candidates(frames: pl.DataFrame) -> pl.DataFrame:
    """Review candidates (``CANDIDATE_SCHEMA``) from the frames edge devices kept, one row per frame.

    ``frames``: image_id, capture_reasons (a list of the device's reasons). ``low_confidence`` counts as
    ``uncertain``, unknown reasons are ignored and a frame without a known reason is ``random``. The reason is the
    highest-priority one; score flagged 3.0, uncertain 2.0, rare_class 2.0, random 0.5; detail the known reasons
    in priority order, e.g. ``"edge capture: flagged, uncertain"``. Input order is kept.
    """
    _require(frames, ("image_id", "capture_reasons"), "frames")
    if frames.is_empty():
        return pl.DataFrame(schema=CANDIDATE_SCHEMA)
    captured = pl.col("capture_reasons").cast(pl.List(pl.Utf8)).list.eval(pl.element().replace(EDGE_ALIASES))
    present = [captured.list.contains(pl.lit(r)).fill_null(False) for r in EDGE_REASONS]
    known = pl.concat_list(
        [pl.when(has).then(pl.lit(r)).otherwise(pl.lit(None, pl.Utf8)) for has, r in zip(present, EDGE_REASONS)]
    ).list.drop_nulls()
    return (
        frames.select(pl.col("image_id").cast(pl.Utf8), known.alias("known"))
        .with_columns(
            pl.when(pl.col("known").list.len() > 0).then(pl.col("known")).otherwise(pl.lit(["random"])).alias("known")
        )
        .select(
            "image_id",
            pl.col("known").list.first().alias("reason"),
            pl.col("known").list.first().replace_strict(EDGE_SCORES, return_dtype=pl.Float64).alias("score"),
            pl.format("edge capture: {}", pl.col("known").list.join(", ")).alias("detail"),
        )
    )


# -- the queue --------------------------------------------------------------------------------------
def held_out_candidates(images: pl.DataFrame) -> pl.DataFrame:
    """Images held out of gold because some of their annotation records were rejected (``held_out``: the reason):
    a reviewer labels them again. Score 2.5, between a flagged frame and an uncertain one."""
    _require(images, ("image_id", "held_out"), "images")
    rows = images.filter(pl.col("held_out").fill_null("") != "").select(
        "image_id",
        pl.lit("held_out").alias("reason"),
        pl.lit(2.5).alias("score"),
        ("held out of gold: " + pl.col("held_out")).alias("detail"),
    )
    return rows.cast(CANDIDATE_SCHEMA)


def select_queue(candidates: pl.DataFrame, budget: int, *, exclude: Iterable[str] = ()) -> pl.DataFrame:
    """The review queue (``QUEUE_SCHEMA``): at most ``budget`` images, ranked 1..n.

    ``candidates``: the candidate tables concatenated (an image may appear with several reasons). Images in
    ``exclude`` (e.g. already queued or reviewed) are dropped. Each image keeps one row: its highest-priority
    reason (``REASONS`` order; ties by higher score, then detail), ``reasons`` all its distinct reasons in priority
    order, ``source`` the reason's source. Order: every flagged image first (score descending, then image_id); then
    one image per source in turn (edge, disagreement, drift), each source's images by reason priority, score
    descending, image_id; cut at ``budget``.
    """
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    _require(candidates, CANDIDATE_SCHEMA, "candidates")
    table = candidates.select(
        pl.col("image_id").cast(pl.Utf8),
        pl.col("reason").cast(pl.Utf8),
        pl.col("score").cast(pl.Float64).fill_nan(None).fill_null(0.0),
        pl.col("detail").cast(pl.Utf8).fill_null(""),
    ).filter(
        pl.col("image_id").is_not_null() & ~pl.col("image_id").is_in(pl.Series(list(exclude), dtype=pl.Utf8).implode())
    )
    unknown = sorted(set(table["reason"].to_list()) - set(REASONS), key=str)
    if unknown:
        raise ValueError(f"unknown review reason {', '.join(map(repr, unknown))}: use one of {', '.join(REASONS)}")
    if table.is_empty():
        return pl.DataFrame(schema=QUEUE_SCHEMA)

    priority = {r: i for i, r in enumerate(REASONS)}
    table = table.with_columns(pl.col("reason").replace_strict(priority, return_dtype=pl.Int64).alias("priority"))
    all_reasons = (
        table.select("image_id", "priority", "reason")
        .unique()
        .sort("image_id", "priority")
        .group_by("image_id", maintain_order=True)
        .agg(pl.col("reason").str.join(", ").alias("reasons"))
    )
    kept = (
        table.sort("image_id", "priority", "score", "detail", descending=[False, False, True, False])
        .unique("image_id", keep="first", maintain_order=True)
        .join(all_reasons, on="image_id", how="left")
        .with_columns(
            pl.col("reason").replace_strict(SOURCES, return_dtype=pl.Utf8).alias("source"),
            (pl.col("reason") == "flagged").alias("flagged"),
        )
    )
    sources = {s: i for i, s in enumerate(SOURCE_ORDER)}
    flagged = kept.filter(pl.col("flagged")).sort(["score", "image_id"], descending=[True, False])
    rest = (
        kept.filter(~pl.col("flagged"))
        .sort(["priority", "score", "image_id"], descending=[False, True, False])
        .with_columns(
            pl.int_range(pl.len(), dtype=pl.UInt32).over("source").alias("turn"),
            pl.col("source").replace_strict(sources, return_dtype=pl.Int64).alias("source_order"),
        )
        .sort("turn", "source_order")  # round robin: each source's first image, then each one's second, ...
        .drop("turn", "source_order")
    )
    return (
        pl.concat([flagged, rest])
        .head(budget)
        .with_row_index("rank", offset=1)
        .select(pl.col("rank").cast(pl.Int64), *[c for c in QUEUE_SCHEMA if c != "rank"])
    )


def reason_counts(queue: pl.DataFrame) -> dict[str, int]:
    """reason → number of queued images, in ``REASONS`` order (reasons with no image left out)."""
    counts = Counter(queue["reason"].to_list()) if "reason" in queue.columns else Counter()
    return {r: counts[r] for r in REASONS if counts[r]}


def queue_markdown(queue: pl.DataFrame, limit: int = 50) -> str:
    """The first ``limit`` rows as a Markdown table (rank | image | reason | score | detail), for the UI."""
    if queue.is_empty():
        return "(empty queue)"
    lines = ["| rank | image | reason | score | detail |", "| ---: | --- | --- | ---: | --- |"]
    for row in queue.head(max(limit, 0)).iter_rows(named=True):
        detail = (row["detail"] or "").replace("|", "\\|")
        lines.append(f"| {row['rank']} | `{row['image_id'][:12]}` | {row['reason']} | {row['score']:g} | {detail} |")
    if queue.height > limit:
        lines.append("")
        lines.append(f"… and {queue.height - max(limit, 0)} more")
    return "\n".join(lines)
