"""Pixel bombs in the pipeline: quarantined from the header at ingestion, processing and corrections."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import polars as pl
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import processed, raw
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "edge"))
from test_bounded_decoding import png_bomb  # noqa: E402

# The worker's own code (lib.vision.ingest, as raw_ingestion calls it) in a fresh process; it reports its peak
# resident memory before and after ingesting a batch that holds a pixel bomb.
INGEST_CHILD = r"""
import json, resource, sys
import cv2, numpy as np
from alumi_pipelines.lib.vision import ingest, imaging
from alumi_pipelines.lib.vision.labels import ClassMap

bomb = open(sys.argv[1], "rb").read()
files = {"_batch.json": b'{"format": "yolo"}', "bomb.png": bomb}
for i in range(4):
    files[f"good{i}.png"] = cv2.imencode(".png", np.full((96, 128, 3), 40 * i, np.uint8))[1].tobytes()
    files[f"good{i}.txt"] = b"0 0.5 0.5 0.2 0.2\n"
files["bomb.txt"] = b"0 0.5 0.5 0.2 0.2\n"
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak()
result = ingest.ingest_batch(
    "b1", {"format": "yolo"}, list(files), files.__getitem__, ClassMap.of(["scratch"]),
    min_side=32, store=lambda *a: None, workers=2, limits=imaging.Limits(100_000_000, 1024**3),
)
print(json.dumps({"before_mb": before, "after_mb": peak(), "rejections": result.rejections,
                  "ingested": sorted(m["source_path"] for m in result.manifest)}))
"""


def test_a_pixel_bomb_png_is_quarantined_without_the_worker_growing_past_100_mb(tmp_path):
    bomb = png_bomb(20_000)  # 400 million pixels: 1.2 GB as BGR
    assert len(bomb) < 100_000
    (tmp_path / "bomb.png").write_bytes(bomb)
    env_path = f"{ROOT}:{ROOT / 'edge_export'}"
    out = subprocess.run(
        [sys.executable, "-c", INGEST_CHILD, str(tmp_path / "bomb.png")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ingested"] == ["good0.png", "good1.png", "good2.png", "good3.png"]
    [rejection] = [r for r in report["rejections"] if r["path"] == "bomb.png"]
    assert rejection["stage"] == "image"
    assert "20000x20000 pixels" in rejection["reason"] and "refused before decoding" in rejection["reason"]
    growth = report["after_mb"] - report["before_mb"]
    print(json.dumps({"peak_rss_before_mb": report["before_mb"], "growth_mb": round(growth, 1)}))
    assert growth < 100, f"the ingestion worker's peak memory grew by {growth:.0f} MB"


def _png(seed: int, side: int = 200) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".png", rng.integers(0, 255, (side, side, 3), dtype=np.uint8))[1].tobytes()


def test_ingestion_and_processing_quarantine_images_over_the_limits_with_the_reason(lake, settings):
    instance = DagsterInstance.ephemeral()
    batch = "bombs-1"
    root = f"landing/{batch}"
    for name, data in {
        "a.png": _png(1),
        "b.png": _png(2),
        "large.png": _png(3, side=400),
        "bomb.png": png_bomb(20_000),
    }.items():
        lake.write_bytes(f"{root}/{name}", data)
        lake.write_bytes(f"{root}/{name[:-4]}.txt", b"0 0.5 0.5 0.2 0.2\n")
    lake.write_bytes(f"{root}/classes.txt", b"scratch\ndent\npit\ncrack\nstain\n")
    lake.write_bytes(f"{root}/_batch.json", json.dumps({"format": "yolo"}).encode())
    instance.add_dynamic_partitions(landing_batches.name, [batch])
    resources = {"lake": lake, "pipeline_settings": settings}
    assert materialize([raw.raw_ingestion], instance=instance, partition_key=batch, resources=resources).success

    quarantine = lake.read_table(lake_keys.quarantine_table_key(batch))
    bomb = quarantine.filter(pl.col("path") == "bomb.png").row(0, named=True)
    assert bomb["stage"] == "image" and "over the limit of 100,000,000 pixels" in bomb["reason"]
    assert sorted(lake.read_table(lake_keys.raw_manifest_key(batch))["source_path"]) == ["a.png", "b.png", "large.png"]

    # processing checks the header again: with a lower limit the 400x400 image is quarantined, the rest flows
    lower = PipelineSettings(**{**settings.model_dump(), "max_image_pixels": 200 * 200})
    for _ in range(2):  # a re-run gives the same quarantine table
        result = materialize(
            [processed.processing],
            instance=instance,
            partition_key=batch,
            resources={"lake": lake, "pipeline_settings": lower},
        )
        assert result.success
        meta = {
            e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
        }
        assert meta["processed_images"]["quarantined"].value == 1
        table = lake.read_table(lake_keys.quarantine_table_key(batch))
        refused = table.filter(pl.col("stage") == "processed")
        assert refused["path"].to_list() == ["large.png"]
        assert "400x400 pixels (160,000), over the limit of 40,000" in refused["reason"][0]
        assert table.height == quarantine.height + 1
    features = lake.read_table(lake_keys.processed_features_key(batch))
    assert features.height == 2
    assert lake.exists(lake_keys.quarantine_file_key(batch, "large.png"))


def test_corrections_of_images_over_the_pixel_limit_are_rejected():
    from alumi_pipelines.lib.vision.corrections import validate
    from alumi_pipelines.lib.vision.corrections.records import Correction

    images = pl.DataFrame({"image_id": ["small", "huge"], "orig_width": [100, 20_000], "orig_height": [100, 20_000]})
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def correction(cid, image_id, frame=None):
        return Correction(
            correction_id=cid,
            kind="add",
            action="add",
            level="qa",
            origin="qa-tool",
            image_id=image_id,
            image_ref=image_id,
            author="qa-1",
            timestamp="2026-11-30T10:00:00Z",
            class_name="scratch",
            box=(10.0, 10.0, 20.0, 20.0),
            frame=frame,
            source_file="qa.csv",
            line=1,
        )

    records = [correction("c1", "small"), correction("c2", "huge"), correction("c3", "small", frame=(50_000, 50_000))]
    valid, rejects = validate(records, images, ["scratch"], now=now, max_pixels=100_000_000)
    assert [v.correction_id for v in valid] == ["c1"]
    reasons = {r["record_id"]: r["reason"] for r in rejects}
    assert (
        reasons["c2"] == "image of 20000x20000 pixels exceeds the pixel limit of 100,000,000 (ALUMI_MAX_IMAGE_PIXELS)"
    )
    assert reasons["c3"].startswith("annotated frame of 50000x50000 pixels exceeds the pixel limit")
