"""The real CR7-DET sample through import → raw → processed → gold: counts, duplicate groups, split."""

import hashlib
from collections import defaultdict

import polars as pl
import pytest

from alumi_pipelines.assets.gold import build_gold
from alumi_pipelines.assets.processed import process_batch
from alumi_pipelines.assets.raw import ingest_landing_batch
from alumi_pipelines.cli import import_dataset
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

CLASSES = ["inclusions", "dents", "oil_spots", "pits", "punching", "linear", "macular"]


@pytest.fixture(scope="module")
def cr7_lake(tmp_path_factory):
    from cli_helpers import CR7

    if not CR7.is_dir():
        pytest.skip(f"real-data sample not found at {CR7} (it lives in ../shared/data, outside the repository)")
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(tmp_path_factory.mktemp("cr7") / "lake"))
    settings = PipelineSettings(classes=CLASSES, image_size=640)
    names = [n.strip() for n in (CR7 / "classes.txt").read_text().splitlines() if n.strip()]
    import_dataset(lake, CR7, "yolo", "cr7", names)
    ingest = ingest_landing_batch(lake, "cr7", settings)
    process_batch(lake, "cr7", settings)
    gold = build_gold(lake, settings)
    return CR7, lake, ingest, gold


def test_counts(cr7_lake):
    cr7, lake, ingest, gold = cr7_lake
    manifest = lake.read_table(lake_keys.raw_manifest_key("cr7"))
    assert manifest.height == len(list((cr7 / "image").glob("*.jpg"))) == 1415
    assert manifest["image_id"].n_unique() == 1401
    labels = lake.read_table(lake_keys.raw_labels_key("cr7"))
    expected_boxes = sum(
        len([line for line in p.read_text().splitlines() if line.strip()]) for p in (cr7 / "label").glob("*.txt")
    )
    assert labels.height == expected_boxes == 3815
    # the README is the only rejection: every image decodes and every label line is valid
    rejections = lake.read_table(lake_keys.quarantine_table_key("cr7"))
    assert rejections["path"].to_list() == ["README.md"]
    per_class = dict(labels.group_by("class_name").len().iter_rows())
    independent = defaultdict(int)
    for p in (cr7 / "label").glob("*.txt"):
        for line in p.read_text().splitlines():
            if line.strip():
                independent[CLASSES[int(line.split()[0])]] += 1
    assert (
        per_class
        == dict(independent)
        == {
            "inclusions": 666,
            "dents": 434,
            "oil_spots": 608,
            "pits": 678,
            "punching": 430,
            "linear": 526,
            "macular": 473,
        }
    )


def test_duplicate_groups(cr7_lake):
    cr7, lake, ingest, gold = cr7_lake
    groups = defaultdict(list)
    for path in (cr7 / "image").glob("*.jpg"):
        groups[hashlib.sha256(path.read_bytes()).hexdigest()].append(path.name)
    duplicates = {k: sorted(v) for k, v in groups.items() if len(v) > 1}
    assert len(duplicates) == 14 and all(len(v) == 2 for v in duplicates.values())
    manifest = lake.read_table(lake_keys.raw_manifest_key("cr7"))
    seen = manifest.group_by("image_id").agg(pl.col("source_path").sort()).filter(pl.col("source_path").list.len() > 1)
    assert {r[0]: [p.rsplit("/", 1)[-1] for p in r[1]] for r in seen.iter_rows()} == duplicates
    # 13 pairs carry agreeing labels (rounding differences only); pits203/pits504 genuinely disagree
    assert len(gold.conflicts) == 1
    assert {gold.conflicts[0]["kept"].rsplit("/", 1)[-1], gold.conflicts[0]["other"].rsplit("/", 1)[-1]} == {
        "pits203.txt",
        "pits504.txt",
    }


def test_split(cr7_lake):
    cr7, lake, ingest, gold = cr7_lake
    manifest = lake.read_table(f"{gold.prefix}/manifest.parquet")
    assert manifest.height == 1401 and manifest["image_id"].n_unique() == 1401
    # a new lake's split: 0.8 / 0.1 / 0.1
    assert gold.counts == {"train": 1126, "val": 148, "test": 127}
    assert gold.split_fractions == (0.8, 0.1, 0.1)
    for split, (low, high) in {"train": (0.75, 0.85), "val": (0.07, 0.13), "test": (0.07, 0.13)}.items():
        assert low < gold.counts[split] / 1401 < high
        assert all(gold.class_counts[split][c] > 0 for c in CLASSES)
    # stratified: every class has roughly the same share of its boxes in test
    totals = {c: sum(gold.class_counts[s][c] for s in gold.class_counts) for c in CLASSES}
    for c in CLASSES:
        assert 0.04 < gold.class_counts["test"][c] / totals[c] < 0.2
