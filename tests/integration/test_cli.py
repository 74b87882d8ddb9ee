"""The README's other pipeline commands: importing a dataset folder, the process-branch demo data."""

import json
from pathlib import Path

import cv2
import numpy as np
import polars as pl
from cli_helpers import BIN, run


def test_alumi_import_yolo_folder_then_ingest(cli_env, tmp_path):
    src = tmp_path / "my dataset"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    (src / "classes.txt").write_text("Scratch\nDent\n")
    for i in range(3):
        cv2.imwrite(str(src / "images" / f"img {i}.jpg"), np.full((120, 160, 3), 100 + i, np.uint8))
        (src / "labels" / f"img {i}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.25")
    (src / "labels" / "img 2.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class 7 is not in classes.txt
    out = run([BIN / "alumi", "import", src, "--format", "yolo", "--batch", "import-test"], cli_env)
    assert "copied 7 files" in out.stdout  # 3 images, 3 labels, classes.txt
    assert "the lake's class map is now Scratch, Dent (from this dataset)" in out.stdout
    tags = run([BIN / "alumi", "batches", "--tags"], cli_env).stdout.strip()
    run(
        [BIN / "dagster", "job", "execute", "-m", "alumi_pipelines.definitions", "-j", "ingestion_job", "--tags", tags],
        cli_env,
    )
    lake = Path(cli_env["ALUMI_HOME"]) / "lake"
    labels = pl.read_parquet(lake / "processed" / "labels" / "import-test.parquet")
    assert sorted(labels["class_name"].to_list()) == ["Dent", "Scratch"]  # the lake's class map: its classes.txt
    reasons = pl.read_parquet(lake / "quarantine" / "import-test" / "rejections.parquet")["reason"].to_list()
    assert any("7" in r for r in reasons)


def test_plant_demo_data_and_days(cli_env):
    run([BIN / "alumi", "plant-demo-data", "--days", "2", "--parts", "12"], cli_env)
    tags = json.loads(run([BIN / "alumi", "plant-days"], cli_env).stdout)
    start, end = tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]
    assert start < end
    files = list((Path(cli_env["ALUMI_HOME"]) / "lake" / "landing" / "plant").rglob("*.csv"))
    assert any(f.name.startswith("historian_") for f in files) and any(f.name == "outcomes.csv" for f in files)
