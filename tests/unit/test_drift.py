"""Drift of per-image features on synthetic production scenarios, prediction drift, bounded sampling."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from alumi_pipelines.lib import drift
from alumi_pipelines.lib.vision.imaging import FEATURE_COLUMNS, features
from alumi_pipelines.lib.vision.synth import render_image

SIZE = 160
COLOUR_AND_LIGHT = ("brightness", "contrast", "sharpness", "mean_b", "mean_g", "mean_r")


def feature_rows(condition: str, seeds) -> pl.DataFrame:
    """Per-image features of synthetic renders, shaped like a processed features table."""
    rows = []
    for seed in seeds:
        image = render_image(seed, SIZE, SIZE, condition=condition).image
        rows.append(
            {
                "image_id": f"{condition}-{seed}",
                "batch": condition,
                "orig_width": SIZE,
                "orig_height": SIZE,
                **features(image),
            }
        )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def scenario():
    """Training-set reference, a nominal production week, and one of darkened + blurred images."""
    return {
        "reference": feature_rows("nominal", range(0, 60)),
        "nominal": feature_rows("nominal", range(1000, 1040)),
        "degraded": pl.concat([feature_rows("dark", range(2000, 2020)), feature_rows("blurred", range(3000, 3020))]),
        "blurred": feature_rows("blurred", range(4000, 4030)),
    }


@pytest.fixture(scope="module")
def full_results(scenario):
    """Evidently on every row (evidently is imported once, here)."""
    ref = scenario["reference"]
    return {name: drift.feature_drift(ref, scenario[name], max_rows=None) for name in ("nominal", "degraded")}


def test_drift_columns_cover_image_features_and_size():
    assert drift.IMAGE_FEATURE_COLUMNS == FEATURE_COLUMNS
    assert drift.DRIFT_COLUMNS == FEATURE_COLUMNS + ("orig_width", "orig_height")


def test_same_distribution_passes(full_results):
    result = full_results["nominal"]
    assert result.passed is True
    assert result.drift_share < 0.5
    assert result.drift_share == pytest.approx(len(result.drifted_columns) / len(drift.DRIFT_COLUMNS))
    assert not {"brightness", "sharpness", "orig_width", "orig_height"} & set(result.drifted_columns)
    assert (result.reference_rows, result.current_rows, result.reference_sampled, result.current_sampled) == (
        60,
        40,
        60,
        40,
    )


def test_darkened_and_blurred_images_drift(full_results):
    result = full_results["degraded"]
    assert result.passed is False
    assert result.drift_share >= 0.5
    assert set(COLOUR_AND_LIGHT) <= set(result.drifted_columns)
    assert not {"orig_width", "orig_height"} & set(result.drifted_columns)
    # up to 1,000 reference rows evidently uses a p-value test
    assert result.per_column["brightness"].stattest == "K-S p_value"
    assert result.per_column["brightness"].score < 1e-4 and result.per_column["orig_width"].score == 1.0


def test_blur_alone_shows_in_sharpness(scenario):
    result = drift.feature_drift(scenario["reference"], scenario["blurred"])
    assert result.per_column["sharpness"].drifted
    assert not result.per_column["brightness"].drifted
    assert result.passed is True  # one symptom in a few columns stays below the share


def test_reports_carry_the_result(full_results):
    result = full_results["degraded"]
    body = json.loads(result.json)
    assert body["drift_share"] == result.drift_share and body["passed"] is False
    assert body["drifted_columns"] == result.drifted_columns
    assert body["per_column"]["sharpness"]["drifted"] is True
    names = [m["config"]["type"].rsplit(":", 1)[-1] for m in body["evidently"]["metrics"]]
    assert names.count("DriftedColumnsCount") == 1 and names.count("ValueDrift") == len(drift.DRIFT_COLUMNS)
    assert result.html.lstrip().lower().startswith(b"<!doctype html") or result.html.lstrip().lower().startswith(
        b"<html"
    )
    assert b"brightness" in result.html and len(result.html) > 100_000


@pytest.mark.parametrize("case", ["nominal", "degraded"])
def test_sampled_result_agrees_with_full(scenario, full_results, case):
    sampled = drift.feature_drift(scenario["reference"], scenario[case], max_rows=30, seed=3)
    full = full_results[case]
    assert (sampled.reference_sampled, sampled.current_sampled) == (30, 30)
    assert (sampled.reference_rows, sampled.current_rows) == (full.reference_rows, full.current_rows)
    assert sampled.passed == full.passed
    strong = [c for c in full.drifted_columns if full.per_column[c].score < 1e-4]
    assert set(strong) <= set(sampled.drifted_columns)


def test_prediction_drift_on_confidence_and_class_mix():
    rng = np.random.default_rng(7)

    def preds(counts: dict[str, int], a: float, b: float) -> pl.DataFrame:
        names = [name for name, n in counts.items() for _ in range(n)]
        order = rng.permutation(len(names))
        return pl.DataFrame({"class_name": [names[i] for i in order], "confidence": rng.beta(a, b, len(names))})

    reference = preds({"scratch": 200, "dent": 120, "pit": 80}, 6, 2)
    same = drift.prediction_drift(reference, preds({"scratch": 150, "dent": 90, "pit": 60}, 6, 2))
    assert same.passed is True and same.drifted_columns == []
    assert same.per_column["class_name"].score > 0.9  # identical class proportions
    shifted = drift.prediction_drift(reference, preds({"scratch": 30, "dent": 60, "pit": 210}, 2, 3))
    assert shifted.passed is False and shifted.drift_share == 1.0
    assert shifted.drifted_columns == ["confidence", "class_name"]


def test_bad_inputs_name_the_problem(scenario):
    ref = scenario["reference"]
    with pytest.raises(ValueError, match=r"current: missing column\(s\) sharpness"):
        drift.feature_drift(ref, scenario["nominal"].drop("sharpness"))
    with pytest.raises(ValueError, match="current: no rows"):
        drift.feature_drift(ref, ref.head(0))
    with pytest.raises(ValueError, match=r"threshold_share must be in \(0, 1\]"):
        drift.feature_drift(ref, ref, threshold_share=0)


# -- sampling -----------------------------------------------------------------------------------------------


def _table(n: int, start: int = 0) -> pl.DataFrame:
    ids = [f"{i:08d}" for i in range(start, start + n)]
    return pl.DataFrame({"image_id": ids, "value": [float(i) for i in range(start, start + n)]})


def test_sampling_is_bounded_deterministic_and_ordered():
    table = _table(20_000)
    sample = drift.sample_rows(table, 500, seed=1)
    assert sample.height == 500
    assert sample.equals(drift.sample_rows(table, 500, seed=1))
    assert sample["value"].is_sorted()  # original order kept
    assert not sample.equals(drift.sample_rows(table, 500, seed=2))
    assert drift.sample_rows(table.head(300), 500, seed=1).equals(table.head(300))  # small tables whole
    shuffled = table.sample(fraction=1.0, shuffle=True, seed=5)
    assert set(drift.sample_rows(shuffled, 500, seed=1)["image_id"]) == set(
        sample["image_id"]
    )  # by content, not position
    # spread over the whole table, not the first rows
    assert sample["value"].min() < 1_000 and sample["value"].max() > 19_000


def test_sampling_is_stable_as_data_grows():
    old = _table(10_000)
    grown = pl.concat([old, _table(10_000, start=10_000)])
    kept_old = set(drift.sample_rows(old, 1_000, seed=0)["image_id"])
    kept_grown = set(drift.sample_rows(grown, 1_000, seed=0)["image_id"])
    survivors = {i for i in kept_grown if int(i) < 10_000}
    assert survivors <= kept_old  # an old row left out never comes back
    assert 350 <= len(survivors) <= 650  # about half the sample stays old rows


def test_sampling_keys_and_limits():
    rows = pl.DataFrame({"class_name": ["a", "b"] * 50, "confidence": [i / 100 for i in range(100)]})
    assert drift.sample_rows(rows, 10, seed=0).height == 10  # no image_id: the whole row is the key
    assert drift.sample_rows(rows, 10, seed=0, key=["class_name"]).height == 10
    with pytest.raises(ValueError, match="sample key column"):
        drift.sample_rows(rows, 10, key=["image_id"])
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        drift.sample_rows(rows, 0)
