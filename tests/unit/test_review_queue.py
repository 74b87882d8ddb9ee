"""The review queue: label/prediction disagreements, drift outliers, edge captures, and the budgeted queue."""

from __future__ import annotations

import polars as pl
import pytest

from alumi_pipelines.lib.vision import review as rv

H = 0.2  # every box in the disagreement tests is 0.2 high and on the same row (IoU is a 1-D overlap)


def label_rows(*rows: tuple[str, str, float, float]) -> pl.DataFrame:
    """Canonical label rows (image_id, class_name, x_center, width) plus a column the module must ignore."""
    return pl.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "class_name": [r[1] for r in rows],
            "class_id": [0] * len(rows),
            "x_center": [r[2] for r in rows],
            "y_center": [0.5] * len(rows),
            "width": [r[3] for r in rows],
            "height": [H] * len(rows),
        },
        schema_overrides={"image_id": pl.Utf8, "class_name": pl.Utf8},
    )


def prediction_rows(*rows: tuple[str, str, float, float, float]) -> pl.DataFrame:
    """Prediction rows (image_id, class_name, confidence, x_center, width)."""
    return pl.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "class_name": [r[1] for r in rows],
            "confidence": [r[2] for r in rows],
            "x_center": [r[3] for r in rows],
            "y_center": [0.5] * len(rows),
            "width": [r[4] for r in rows],
            "height": [H] * len(rows),
        },
        schema_overrides={"image_id": pl.Utf8, "class_name": pl.Utf8},
    )


# -- disagreements ----------------------------------------------------------------------------------
def scene() -> tuple[pl.DataFrame, pl.DataFrame]:
    """a: greedy matching with a class change; b: labels only; c: predictions only; d: a low-confidence guess.

    In a, IoU(scratch@0.50, P@0.51) = 0.905 is the best pair, IoU(dent@0.54, P@0.51) = 0.739 and
    IoU(dent@0.54, pit@0.60) = 0.538: greedy matching gives scratch→scratch and dent→pit (one class change), where
    matching the dent first would have taken P@0.51 and left the scratch without a partner.
    """
    labels = label_rows(
        ("a", "dent", 0.54, 0.2),
        ("a", "scratch", 0.50, 0.2),
        ("b", "dent", 0.2, 0.1),
        ("b", "dent", 0.8, 0.1),
        ("b", "scratch", 0.5, 0.1),
        ("d", "pit", 0.5, 0.2),
    )
    predictions = prediction_rows(
        ("a", "scratch", 0.9, 0.51, 0.2),
        ("a", "pit", 0.6, 0.60, 0.2),
        ("c", "pit", 0.8, 0.5, 0.1),
        ("d", "pit", 0.2, 0.5, 0.2),  # below the default min_confidence (0.25)
        ("z", "pit", 0.9, 0.5, 0.1),  # an image that was not asked for
    )
    return labels, predictions


def test_disagreements_count_missed_extra_and_class_changes_per_image():
    labels, predictions = scene()
    table = rv.disagreements(labels, predictions, ["a", "b", "c", "d", "e"])
    assert table.schema == pl.Schema(rv.DISAGREEMENT_SCHEMA)
    assert table.columns == ["image_id", "labels", "predicted", "missed", "extra", "class_changes", "score", "detail"]
    assert table.rows() == [
        ("a", 2, 2, 0, 0, 1, 1.0, "1 class change (dent→pit)"),
        ("b", 3, 0, 3, 0, 0, 3.0, "3 missed (dent ×2, scratch)"),
        ("c", 0, 1, 0, 1, 0, 1.0, "1 extra (pit)"),
        ("d", 1, 0, 1, 0, 0, 1.0, "1 missed (pit)"),  # its only prediction is below min_confidence
        ("e", 0, 0, 0, 0, 0, 0.0, "agrees"),  # neither labels nor predictions
    ]


def test_disagreements_honour_min_confidence_iou_and_row_order():
    labels, predictions = scene()
    low = rv.disagreements(labels, predictions, ["d"], min_confidence=0.1)
    assert low.select("predicted", "score", "detail").row(0) == (1, 0.0, "agrees")

    # at iou 0.8 only scratch→scratch (0.905) matches: the dent is missed and the pit is extra
    strict = rv.disagreements(labels, predictions, ["a"], iou=0.8)
    assert strict.select("missed", "extra", "class_changes", "detail").row(0) == (
        1,
        1,
        0,
        "1 missed (dent), 1 extra (pit)",
    )

    shuffled = rv.disagreements(labels.reverse(), predictions.reverse(), ["a", "b", "c", "d", "e"])
    assert shuffled.equals(rv.disagreements(labels, predictions, ["a", "b", "c", "d", "e"]))


def test_disagreement_detail_lists_every_kind_and_pluralises_class_changes():
    labels = label_rows(
        ("m", "dent", 0.2, 0.1), ("m", "dent", 0.5, 0.1), ("m", "pit", 0.8, 0.1), ("m", "x", 0.05, 0.02)
    )
    predictions = prediction_rows(
        ("m", "scratch", 0.9, 0.2, 0.1), ("m", "pit", 0.9, 0.5, 0.1), ("m", "pit", 0.9, 0.95, 0.05)
    )
    row = rv.disagreements(labels, predictions, ["m"]).row(0, named=True)
    assert (row["missed"], row["extra"], row["class_changes"], row["score"]) == (2, 1, 2, 5.0)
    assert row["detail"] == "2 missed (pit, x), 1 extra (pit), 2 class changes (dent→pit, dent→scratch)"


def test_disagreement_candidates_pick_the_largest_kind_with_ties_in_order():
    table = pl.DataFrame(
        {
            "image_id": ["tie_me", "tie_ce", "more_c", "more_e", "agree"],
            "missed": [1, 0, 1, 1, 0],
            "extra": [1, 1, 0, 2, 0],
            "class_changes": [0, 1, 2, 0, 0],
            "score": [2.0, 2.0, 3.0, 3.0, 0.0],
            "detail": ["d1", "d2", "d3", "d4", "agrees"],
        }
    )
    candidates = rv.disagreement_candidates(table)
    assert candidates.schema == pl.Schema(rv.CANDIDATE_SCHEMA)
    assert candidates.rows() == [
        ("tie_me", "missed_boxes", 2.0, "d1"),
        ("tie_ce", "class_changes", 2.0, "d2"),
        ("more_c", "class_changes", 3.0, "d3"),
        ("more_e", "extra_boxes", 3.0, "d4"),
    ]

    labels, predictions = scene()
    from_scene = rv.disagreement_candidates(rv.disagreements(labels, predictions, ["a", "b", "c", "e"]))
    assert from_scene.select("image_id", "reason").rows() == [
        ("a", "class_changes"),
        ("b", "missed_boxes"),
        ("c", "extra_boxes"),
    ]


# -- drift outliers ---------------------------------------------------------------------------------
def reference() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": [f"r{i}" for i in range(5)],
            "brightness": [0.4, 0.45, 0.5, 0.55, 0.6],  # median 0.5, MAD 0.05
            "contrast": [1.0, 1.0, 1.0, 1.0, 2.0],  # MAD 0: mean 1.2, std 0.4472 (ddof 1)
            "sharpness": [5.0, 5.0, 5.0, 5.0, 5.0],  # MAD and std 0: skipped
            "noise": [0.1, 0.2, 0.3, 0.4, None],  # 4 values: skipped
        }
    )


def test_drift_outliers_robust_z_with_mad_zero_fallback_and_skipped_columns():
    features = pl.DataFrame(
        {
            "image_id": ["bright", "dark", "normal", "flat", "nulls", "sharp"],
            "brightness": [0.8, 0.2, 0.6, 0.5, None, 0.5],
            "contrast": [1.0, 1.0, 1.2, 3.0, 3.0, 1.2],
            "sharpness": [5.0, 5.0, 5.0, 5.0, 5.0, 500.0],
            "noise": [0.2, 0.2, 0.2, 0.2, 0.2, 99.0],
        }
    )
    out = rv.drift_outliers(features, reference(), ["brightness", "contrast", "sharpness", "noise"])
    assert out.schema == pl.Schema(rv.CANDIDATE_SCHEMA)
    assert out.rows() == [
        ("bright", "drift_outlier", 4.047, "brightness z=+4.05 (reference median 0.5)"),  # 0.6745 * 0.3 / 0.05
        ("dark", "drift_outlier", 4.047, "brightness z=-4.05 (reference median 0.5)"),
        ("flat", "drift_outlier", 4.025, "contrast z=+4.02 (reference mean 1.2)"),  # (3 - 1.2) / 0.4472
        ("nulls", "drift_outlier", 4.025, "contrast z=+4.02 (reference mean 1.2)"),  # null brightness ignored
    ]  # normal: |z| 1.35; sharp: its columns are skipped

    assert rv.drift_outliers(features, reference(), ["brightness"], threshold=1.3)["image_id"].to_list() == [
        "bright",
        "dark",
        "normal",
    ]
    assert rv.drift_outliers(features, reference(), ["sharpness", "noise"]).is_empty()
    assert rv.drift_outliers(features, reference().head(4), ["brightness", "contrast"]).is_empty()  # < 5 rows
    with pytest.raises(ValueError, match="no column glare"):
        rv.drift_outliers(features, reference(), ["glare"])


# -- edge captures ----------------------------------------------------------------------------------
def test_edge_candidates_map_reasons_by_priority():
    frames = pl.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "e", "f", "g"],
            "capture_reasons": [
                ["uncertain", "flagged"],
                ["low_confidence"],
                ["uploaded", "motion"],
                [],
                None,
                ["random", "rare_class"],
                ["low_confidence", "uncertain"],
            ],
        },
        schema={"image_id": pl.Utf8, "capture_reasons": pl.List(pl.Utf8)},
    )
    out = rv.edge_candidates(frames)
    assert out.schema == pl.Schema(rv.CANDIDATE_SCHEMA)
    assert out.rows() == [
        ("a", "flagged", 3.0, "edge capture: flagged, uncertain"),
        ("b", "uncertain", 2.0, "edge capture: uncertain"),
        ("c", "random", 0.5, "edge capture: random"),
        ("d", "random", 0.5, "edge capture: random"),
        ("e", "random", 0.5, "edge capture: random"),
        ("f", "rare_class", 2.0, "edge capture: rare_class, random"),
        ("g", "uncertain", 2.0, "edge capture: uncertain"),
    ]
    assert rv.edge_candidates(frames.head(0)).schema == pl.Schema(rv.CANDIDATE_SCHEMA)


# -- the queue --------------------------------------------------------------------------------------
def candidates() -> pl.DataFrame:
    rows = [
        ("f1", "flagged", 3.0, "edge capture: flagged"),
        ("f2", "flagged", 3.0, "edge capture: flagged"),
        ("f2", "missed_boxes", 9.0, "9 missed (dent ×9)"),
        ("f3", "flagged", 4.0, "edge capture: flagged, uncertain"),
        ("x1", "flagged", 5.0, "edge capture: flagged"),  # excluded below
        ("e1", "uncertain", 2.0, "edge capture: uncertain"),
        ("e1", "random", 0.5, "edge capture: random"),
        ("e2", "random", 0.5, "edge capture: random"),
        ("e3", "rare_class", 2.0, "edge capture: rare_class"),
        ("d1", "missed_boxes", 2.0, "2 missed (dent, pit)"),
        ("d1", "drift_outlier", 6.0, "brightness z=+6.00 (reference median 0.5)"),
        ("d2", "extra_boxes", 5.0, "5 extra (pit ×5)"),
        ("d3", "class_changes", 1.0, "1 class change (dent→pit)"),
        ("d3", "class_changes", 1.5, "1 class change (dent→scratch)"),
        ("r1", "drift_outlier", 4.0, "contrast z=-4.00 (reference median 1.1)"),
    ]
    return pl.DataFrame(rows, schema=rv.CANDIDATE_SCHEMA, orient="row")


def test_select_queue_merges_images_and_orders_flagged_first_then_round_robin():
    queue = rv.select_queue(candidates(), 100, exclude=["x1"])
    assert queue.schema == pl.Schema(rv.QUEUE_SCHEMA)
    assert queue.select("rank", "image_id", "reason", "reasons", "source", "score").rows() == [
        (1, "f3", "flagged", "flagged", "edge", 4.0),
        (2, "f1", "flagged", "flagged", "edge", 3.0),
        (3, "f2", "flagged", "flagged, missed_boxes", "edge", 3.0),
        (4, "e1", "uncertain", "uncertain, random", "edge", 2.0),
        (5, "d1", "missed_boxes", "missed_boxes, drift_outlier", "disagreement", 2.0),
        (6, "r1", "drift_outlier", "drift_outlier", "drift", 4.0),
        (7, "e3", "rare_class", "rare_class", "edge", 2.0),
        (8, "d3", "class_changes", "class_changes", "disagreement", 1.5),
        (9, "e2", "random", "random", "edge", 0.5),
        (10, "d2", "extra_boxes", "extra_boxes", "disagreement", 5.0),
    ]
    assert queue.filter(pl.col("image_id") == "d3")["detail"].item() == "1 class change (dent→scratch)"
    assert queue.filter(pl.col("image_id") == "d1")["detail"].item() == "2 missed (dent, pit)"


def test_select_queue_cuts_at_the_budget_and_excludes():
    queue = rv.select_queue(candidates(), 7, exclude=iter(["x1", "e1"]))
    assert queue["image_id"].to_list() == ["f3", "f1", "f2", "e3", "d1", "r1", "e2"]  # e3 moves up for e1
    assert queue["rank"].to_list() == list(range(1, 8))

    with_x1 = rv.select_queue(candidates(), 2)
    assert with_x1["image_id"].to_list() == ["x1", "f3"]


def test_select_queue_is_deterministic_and_rejects_bad_input():
    expected = rv.select_queue(candidates(), 8)
    for seed in range(3):
        assert rv.select_queue(candidates().sample(fraction=1.0, shuffle=True, seed=seed), 8).equals(expected)

    with pytest.raises(ValueError, match="budget must be at least 1, got 0"):
        rv.select_queue(candidates(), 0)
    with pytest.raises(ValueError, match="unknown review reason 'vibes'"):
        rv.select_queue(pl.DataFrame([("a", "vibes", 1.0, "")], schema=rv.CANDIDATE_SCHEMA, orient="row"), 5)

    empty = rv.select_queue(pl.DataFrame(schema=rv.CANDIDATE_SCHEMA), 5)
    assert empty.is_empty() and empty.schema == pl.Schema(rv.QUEUE_SCHEMA)
    all_out = rv.select_queue(candidates(), 5, exclude=candidates()["image_id"].unique())
    assert all_out.is_empty() and all_out.schema == pl.Schema(rv.QUEUE_SCHEMA)


def test_the_pipeline_of_candidates_feeds_the_queue():
    labels, predictions = scene()
    frames = pl.DataFrame(
        {"image_id": ["b", "k"], "capture_reasons": [["flagged"], ["random"]]},
        schema={"image_id": pl.Utf8, "capture_reasons": pl.List(pl.Utf8)},
    )
    pool = pl.concat(
        [
            rv.edge_candidates(frames),
            rv.disagreement_candidates(rv.disagreements(labels, predictions, ["a", "b", "c", "d"])),
        ]
    )
    queue = rv.select_queue(pool, 10)
    assert queue.select("image_id", "reason", "reasons").rows() == [
        ("b", "flagged", "flagged, missed_boxes"),
        ("k", "random", "random"),
        ("d", "missed_boxes", "missed_boxes"),
        ("a", "class_changes", "class_changes"),
        ("c", "extra_boxes", "extra_boxes"),
    ]


# -- reporting --------------------------------------------------------------------------------------
def test_reason_counts_and_markdown():
    queue = rv.select_queue(candidates(), 7, exclude=["x1"])
    counts = rv.reason_counts(queue)
    assert list(counts.items()) == [
        ("flagged", 3),
        ("missed_boxes", 1),
        ("uncertain", 1),
        ("rare_class", 1),
        ("drift_outlier", 1),
    ]
    assert rv.reason_counts(queue.head(0)) == {}

    long_id = "0123456789abcdef" * 4
    table = pl.DataFrame(
        [
            (1, long_id, "flagged", "flagged", "edge", 3.0, "edge capture: flagged"),
            (2, "d1", "missed_boxes", "missed_boxes", "disagreement", 2.0, "a | b"),
            (3, "r1", "drift_outlier", "drift_outlier", "drift", 4.047, "brightness z=+4.05"),
        ],
        schema=rv.QUEUE_SCHEMA,
        orient="row",
    )
    assert rv.queue_markdown(table, limit=2).splitlines() == [
        "| rank | image | reason | score | detail |",
        "| ---: | --- | --- | ---: | --- |",
        "| 1 | `0123456789ab` | flagged | 3 | edge capture: flagged |",
        "| 2 | `d1` | missed_boxes | 2 | a \\| b |",
        "",
        "… and 1 more",
    ]
    assert "… and" not in rv.queue_markdown(table)
    assert rv.queue_markdown(table).splitlines()[-1] == "| 3 | `r1` | drift_outlier | 4.047 | brightness z=+4.05 |"
    assert rv.queue_markdown(table.head(0)) == "(empty queue)"


def test_images_held_out_for_rejected_annotations_are_offered_for_review_after_flagged_ones():
    images = pl.DataFrame(
        {"image_id": ["h1", "ok", "h2"], "held_out": ["labels/h1.txt: line 2: NaN coordinate", "", None]}
    )
    held = rv.held_out_candidates(images)
    assert held.rows() == [("h1", "held_out", 2.5, "held out of gold: labels/h1.txt: line 2: NaN coordinate")]
    edge = rv.edge_candidates(pl.DataFrame({"image_id": ["f", "u"], "capture_reasons": [["flagged"], ["uncertain"]]}))
    queue = rv.select_queue(pl.concat([edge, held]), 3)
    assert queue.select("image_id", "reason", "source").rows() == [
        ("f", "flagged", "edge"),
        ("u", "uncertain", "edge"),
        ("h1", "held_out", "labels"),
    ]
