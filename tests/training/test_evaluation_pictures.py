"""detector_evaluation shows the evaluated model's worst misses and false alarms on the test split as a mosaic."""

from __future__ import annotations

import base64
import re

import cv2
import numpy as np
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets.training.detector import detector_model
from alumi_pipelines.assets.training.evaluation import detector_evaluation
from alumi_pipelines.lib.vision.mosaic import FALSE_ALARM, MISSED
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.settings import Settings


def test_evaluation_shows_the_worst_test_images_with_missed_boxes_and_false_alarms(
    lake, tiny_gold_manifest, registry, ci_profile
):
    settings = PipelineSettings.from_settings(Settings.from_env())
    result = materialize(
        [detector_model, detector_evaluation],
        resources={"lake": lake, "mlflow": registry, "pipeline_settings": settings},
        instance=DagsterInstance.ephemeral(),
        run_config={"ops": {"detector_model": {"config": {"profile": "ci"}}}},
    )
    assert result.success
    (event,) = result.asset_materializations_for_node("detector_evaluation")
    meta = {k: v.value for k, v in event.metadata.items()}
    evaluation = lake.read_json(meta["evaluation_key"])
    assert evaluation["test_images"] == 4

    # the tiny model of two epochs misses boxes: the images with errors are drawn, worst first
    with_errors = meta["test_images_with_errors"]
    assert 1 <= with_errors <= 4
    markdown = meta["worst_errors"]
    assert f"worst {with_errors} of {with_errors} test images with errors (of 4; confidence ≥ 0.25)" in markdown
    data = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown).group(1))
    assert len(data) < 300_000
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == min(4, with_errors) * 160 + (min(4, with_errors) + 1) * 4
    drawn = {
        name: int((image == np.array(colour, np.uint8)).all(axis=2).sum())
        for name, colour in (("missed", MISSED), ("false alarm", FALSE_ALARM))
    }
    assert drawn["missed"] > 50 or drawn["false alarm"] > 50, drawn
    assert float(image.std()) > 20
