"""Review fixtures: one Label Studio server per session (its own venv, loopback, temp data), and one lake with a
labelled batch, a batch of edge frames kept for review and a champion registered in a throwaway MLflow."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "export"))

from label_studio_server import LabelStudioServer, LabelStudioUnavailable  # noqa: E402
from review_support import CLASSES, EDGE_BATCH, SIZE, ReviewLake, train_champion, write_edge_frames  # noqa: E402


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_studio")
    server = LabelStudioServer(root / "data", root / "files")
    try:
        server.start()
    except LabelStudioUnavailable as exc:
        pytest.skip(f"Label Studio cannot start here: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def review_lake(label_studio_server, tmp_path_factory, _isolated_home) -> ReviewLake:
    """A lake below the server's document root: 24 labelled images and 4 edge frames ingested, gold built, and a
    champion trained on it."""
    from dagster import DagsterInstance, materialize

    from alumi_pipelines.assets import corrections, gold, processed, raw
    from alumi_pipelines.assets.raw import write_landing_file
    from alumi_pipelines.lib.vision.synth import write_landing_batch
    from alumi_pipelines.partitions import landing_batches
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings

    root = tmp_path_factory.mktemp("review")
    lake = Lake(base_uri=str(label_studio_server.document_root / root.name / "lake"))
    settings = PipelineSettings(classes=list(CLASSES), image_size=160, workers=2, home=str(_isolated_home))
    instance = DagsterInstance.ephemeral()
    write_landing_batch(
        lambda k, d: write_landing_file(lake, "day-1", k, d),
        "day-1",
        24,
        day=dt.date(2026, 11, 1),
        seed=11,
        size=SIZE,
        classes=CLASSES,
    )
    edge_ids = write_edge_frames(lake)
    instance.add_dynamic_partitions(landing_batches.name, ["day-1", EDGE_BATCH])
    setup = ReviewLake(lake, None, settings, instance, "", edge_ids)
    resources = {"lake": lake, "pipeline_settings": settings}
    for batch in ("day-1", EDGE_BATCH):
        ingested = materialize(
            [raw.raw_ingestion, processed.processing], instance=instance, partition_key=batch, resources=resources
        )
        assert ingested.success
    assert materialize(
        [corrections.label_corrections, gold.gold_dataset], instance=instance, resources=resources
    ).success
    setup.registry, setup.champion = train_champion(lake, root, _isolated_home)
    return setup
