import datetime as dt

import pytest

from alumi_pipelines.assets.raw import write_landing_file
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.settings import DEFAULT_CLASSES


@pytest.fixture
def settings():
    return PipelineSettings(classes=list(DEFAULT_CLASSES), image_size=160, min_image_side=32, split_seed=0, workers=2)


@pytest.fixture
def write_batch(lake):
    """Write a synthetic landing batch; returns its summary."""
    from alumi_pipelines.lib.vision.synth import write_landing_batch

    def _write(batch, n=12, seed=0, size=192, condition="nominal", day=dt.date(2026, 11, 1)):
        return write_landing_batch(
            lambda key, data: write_landing_file(lake, batch, key, data),
            batch,
            n,
            day=day,
            seed=seed,
            size=size,
            condition=condition,
        )

    return _write
