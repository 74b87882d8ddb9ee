"""Gold versions over time: a build killed before its manifest, what a version stores (nothing derivable: at most
2 % of its images' bytes), versions written with image copies (before manifests) or with their derivable columns and
list files (before those were derived) still read and stage the same, pruning old versions with `alumi prune-gold`."""

import json
import os
import subprocess
import sys

import polars as pl
import pytest
import yaml

from alumi_pipelines import cli
from alumi_pipelines.assets.export import gold_image_paths
from alumi_pipelines.assets.gold import (
    build_gold,
    export_gold_labels,
    gold_image_keys,
    gold_prefix_for,
    read_gold_pointer,
    read_version,
    read_version_manifest,
    stage_gold,
)
from alumi_pipelines.assets.processed import process_batch, read_processed
from alumi_pipelines.assets.raw import ingest_landing_batch
from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.lib.vision import gold as gold_plan
from alumi_pipelines.lib.vision.splits import DEFAULT_FRACTIONS, EARLIER_FRACTIONS
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.cache import ContentCache
from alumi_pipelines.resources.lake import Lake


def _ingest(lake, settings, write_batch, batch, seed, n=10):
    write_batch(batch, n=n, seed=seed)
    ingest_landing_batch(lake, batch, settings)
    process_batch(lake, batch, settings)


def _write_copy_style_version(lake, settings) -> str:
    """The current processed zone as a version laid out the way versions were written before manifests: every
    image and label file copied into the version's folder, a manifest without image keys."""
    features, labels = read_processed(lake)
    plan = gold_plan.plan_dataset(
        features, labels, list(settings.classes), seed=settings.split_seed, fractions=EARLIER_FRACTIONS
    )
    prefix = lake_keys.gold_prefix(plan.dataset_hash)
    for row in plan.manifest.iter_rows(named=True):
        lake.write_bytes(f"{prefix}/{row['file']}", lake.read_bytes(lake_keys.processed_image_key(row["image_id"])))
        lake.write_bytes(f"{prefix}/{row['label_file']}", plan.label_text[row["image_id"]].encode())
    doc = {"path": ".", "train": "images/train", "val": "images/val", "test": "images/test"}
    lake.write_bytes(
        f"{prefix}/data.yaml", yaml.safe_dump({**doc, "names": dict(enumerate(settings.classes))}).encode()
    )
    lake.write_table(f"{prefix}/labels.parquet", plan.labels)
    lake.write_table(f"{prefix}/manifest.parquet", plan.manifest)
    lake.write_json(
        lake_keys.GOLD_POINTER, {"dataset_hash": plan.dataset_hash, "prefix": prefix, "counts": plan.counts}
    )
    return plan.dataset_hash


def test_a_gold_build_killed_before_its_manifest_leaves_the_previous_version_current(
    lake, settings, write_batch, tmp_path
):
    _ingest(lake, settings, write_batch, "day-1", 1)
    first = build_gold(lake, settings)
    _ingest(lake, settings, write_batch, "day-2", 2)
    script = f"""
import os, signal
from alumi_pipelines.assets.gold import build_gold
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

real = Lake.write_bytes
def write_bytes(self, key, data):  # the run dies as it is about to write the manifest
    if key.endswith("/manifest.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, key, data)
Lake.write_bytes = write_bytes
build_gold(Lake(base_uri={lake.base_uri!r}), PipelineSettings.model_validate_json({settings.model_dump_json()!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    assert read_gold_pointer(lake)["dataset_hash"] == first.dataset_hash  # readers still see the first version
    half = [d for d in lake.list_dirs(lake_keys.GOLD_DATASETS) if d != first.dataset_hash]
    assert len(half) == 1 and not lake.exists(lake_keys.gold_manifest_key(lake_keys.gold_prefix(half[0])))
    assert lake.exists(lake_keys.gold_labels_key(lake_keys.gold_prefix(half[0])))  # it did get that far
    assert gold_prefix_for(lake, half[0]) == first.prefix  # an incomplete version is never handed out
    with pytest.raises(FileNotFoundError, match="no such complete version"):
        stage_gold(lake, lake_keys.gold_prefix(half[0]), tmp_path / "w", cache=ContentCache(tmp_path / "c", 1 << 30))

    second = build_gold(lake, settings)  # the next run writes the version whole
    assert second.dataset_hash == half[0] and not second.reused
    assert read_gold_pointer(lake)["dataset_hash"] == second.dataset_hash
    assert lake.read_table(lake_keys.gold_manifest_key(second.prefix)).height == 20


def test_processing_killed_before_its_features_table_leaves_the_batch_unprocessed_then_completes(
    lake, settings, write_batch
):
    _ingest(lake, settings, write_batch, "day-1", 1)
    write_batch("day-2", n=10, seed=2)
    ingest_landing_batch(lake, "day-2", settings)
    script = f"""
import os, signal
from alumi_pipelines.assets.processed import process_batch
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

real = Lake.write_bytes
def write_bytes(self, key, data):  # the run dies as it is about to write the features table
    if key == {lake_keys.processed_features_key("day-2")!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, key, data)
Lake.write_bytes = write_bytes
settings = PipelineSettings.model_validate_json({settings.model_dump_json()!r})
process_batch(Lake(base_uri={lake.base_uri!r}), "day-2", settings)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    assert lake.exists(lake_keys.processed_labels_key("day-2"))  # it got as far as the labels
    features, labels = read_processed(lake)  # readers see day-1 alone: no images of day-2 without their boxes
    assert set(features["batch"]) == {"day-1"} and features.height == 10
    assert set(labels["image_id"]) <= set(features["image_id"])

    process_batch(lake, "day-2", settings)  # the next run completes the batch
    features, labels = read_processed(lake)
    assert sorted(features["batch"].unique()) == ["day-1", "day-2"] and features.height == 20
    day2 = set(features.filter(pl.col("batch") == "day-2")["image_id"])
    assert labels.filter(pl.col("image_id").is_in(list(day2))).height > 0


def test_versions_written_with_copies_still_read_and_new_ones_are_manifests(lake, settings, write_batch, tmp_path):
    _ingest(lake, settings, write_batch, "day-1", 1)
    old_hash = _write_copy_style_version(lake, settings)
    old_prefix = lake_keys.gold_prefix(old_hash)
    old_manifest = lake.read_table(lake_keys.gold_manifest_key(old_prefix))
    assert not gold_plan.is_manifest_version(old_manifest)

    # the old version reads as before: locally its own folder, remotely a copy; exports and image paths too
    assert stage_gold(lake, old_prefix, tmp_path / "w1") == lake.local_path(old_prefix)
    remote = Lake(base_uri=f"memory://gold-versions-{tmp_path.name}")
    for f in lake.list_files(old_prefix):
        remote.write_bytes(f.key, lake.read_bytes(f.key))
    staged = stage_gold(remote, old_prefix, tmp_path / "w2", cache=ContentCache(tmp_path / "c2", 1 << 30))
    for row in old_manifest.iter_rows(named=True):
        assert (staged / row["file"]).read_bytes() == lake.read_bytes(f"{old_prefix}/{row['file']}")
    assert set(gold_image_keys(lake, old_prefix).values()) == {f"{old_prefix}/{f}" for f in old_manifest["file"]}
    out = export_gold_labels(lake, tmp_path / "export-old", "yolo")
    assert out["dataset_hash"] == old_hash and out["images_copied"] == 10

    # the next version (same images + a new day) is written the new way; the old one stays readable
    _ingest(lake, settings, write_batch, "day-2", 2)
    new = build_gold(lake, settings)
    manifest = read_version_manifest(lake, new.prefix)
    assert gold_plan.is_manifest_version(manifest) and manifest.height == 20
    assert not [f for f in lake.list_files(new.prefix) if "/images/" in f.key]
    paths = gold_image_paths(lake, new.prefix, ("train", "val", "test"))
    assert sum(len(v) for v in paths.values()) == 20
    assert set(gold_image_keys(lake, new.prefix).values()) == set(manifest["image_key"])
    new_out = export_gold_labels(lake, tmp_path / "export-new", "yolo")
    for row in manifest.iter_rows(named=True):  # the export holds the processed images and the version's labels
        assert (tmp_path / "export-new" / row["file"]).read_bytes() == lake.read_bytes(row["image_key"])
        assert len((tmp_path / "export-new" / row["label_file"]).read_text().splitlines()) == row["n_boxes"]
    assert new_out["images"] == 20
    assert stage_gold(lake, old_prefix, tmp_path / "w3") == lake.local_path(old_prefix)

    # old labels for an image kept in both versions are the same text either way
    shared = manifest.filter(pl.col("image_id").is_in(old_manifest["image_id"].implode())).row(0, named=True)
    old_row = old_manifest.filter(pl.col("image_id") == shared["image_id"]).row(0, named=True)
    root = stage_gold(lake, new.prefix, tmp_path / "w4", cache=ContentCache(tmp_path / "c4", 1 << 30))
    assert (root / shared["label_file"]).read_text() == lake.read_bytes(
        f"{old_prefix}/{old_row['label_file']}"
    ).decode()


def test_alumi_prune_gold_keeps_current_champion_and_newest(lake, settings, write_batch, tmp_path, monkeypatch, capsys):
    _ingest(lake, settings, write_batch, "day-1", 1)
    hashes = [_write_copy_style_version(lake, settings)]
    for day in (2, 3, 4):
        _ingest(lake, settings, write_batch, f"day-{day}", day)
        hashes.append(build_gold(lake, settings).dataset_hash)
    for i, h in enumerate(hashes):  # versions built a day apart, oldest first
        manifest = lake.local_path(lake_keys.gold_manifest_key(lake_keys.gold_prefix(h)))
        stamp = 1_000_000 + i * 86_400
        os.utime(manifest, (stamp, stamp))
    lake.write_json(lake_keys.CHAMPION_RECORD, {"version": "1", "dataset_hash": hashes[0]})
    monkeypatch.setenv("ALUMI_LAKE_URI", lake.base_uri)

    assert cli.main(["prune-gold", "--keep", "1", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("would delete 1 gold version(s) (") and hashes[1][:12] in said
    assert len(lake.list_dirs(lake_keys.GOLD_DATASETS)) == 4

    assert cli.main(["prune-gold", "--keep", "0"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("deleted 2 gold version(s)")
    assert f"{hashes[0][:12]} (champion)" in said and f"{hashes[3][:12]} (current)" in said
    assert sorted(lake.list_dirs(lake_keys.GOLD_DATASETS)) == sorted([hashes[0], hashes[3]])
    for h in hashes[1:3]:  # the pruned manifest versions took no image with them
        assert not lake.exists(lake_keys.gold_prefix(h))
    assert len(lake.list_files(lake_keys.PROCESSED_IMAGES)) == 40
    assert json.loads(lake.read_bytes(lake_keys.GOLD_POINTER))["dataset_hash"] == hashes[3]

    assert cli.main(["prune-gold", "--keep", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "alumi prune-gold: --keep -1: must be 0 or more"


def test_the_split_is_recorded_with_the_lake_so_its_images_keep_their_splits(lake, settings, write_batch, tmp_path):
    _ingest(lake, settings, write_batch, "b1", 1)
    _ingest(lake, settings, write_batch, "b2", 2)
    # a new lake: training gets the larger share, and the lake records it
    first = build_gold(lake, settings)
    assert first.split_fractions == DEFAULT_FRACTIONS == (0.8, 0.1, 0.1)
    assert lake.read_json(lake_keys.SPLIT_SETTINGS) == {
        "fractions": [0.8, 0.1, 0.1],
        "source": "the default for a new lake",
    }
    # an explicit change is recorded, and later builds keep it without the override
    changed = build_gold(lake, settings.model_copy(update={"split_fractions": [0.6, 0.2, 0.2]}))
    assert changed.split_fractions == (0.6, 0.2, 0.2) and changed.dataset_hash != first.dataset_hash
    assert lake.read_json(lake_keys.SPLIT_SETTINGS)["source"] == "ALUMI_SPLIT_FRACTIONS"
    assert build_gold(lake, settings).dataset_hash == changed.dataset_hash


def test_a_lake_with_gold_from_before_the_record_keeps_its_split(lake, settings, write_batch):
    _ingest(lake, settings, write_batch, "b1", 1)
    _ingest(lake, settings, write_batch, "b2", 2)
    old_hash = _write_copy_style_version(lake, settings)
    assert not lake.exists(lake_keys.SPLIT_SETTINGS)
    new = build_gold(lake, settings)
    assert new.split_fractions == EARLIER_FRACTIONS
    assert lake.read_json(lake_keys.SPLIT_SETTINGS)["source"] == "the lake's earlier gold versions"
    old = lake.read_table(f"{lake_keys.gold_prefix(old_hash)}/manifest.parquet").select("image_id", "split")
    now = lake.read_table(lake_keys.gold_manifest_key(new.prefix)).select("image_id", "split")
    assert old.sort("image_id").to_dicts() == now.sort("image_id").to_dicts()


def _write_previous_manifest_version(lake, settings) -> str:
    """The current processed zone as a version laid out the way manifest versions were written before their
    derivable parts were left out: file, label_file and image_key in the manifest, labels keyed by image_id with
    their split, the YOLO list files in the version's folder. No pointer: the next build finds it by its hash."""
    features, labels = read_processed(lake)
    plan = gold_plan.plan_dataset(
        features, labels, list(settings.classes), seed=settings.split_seed, fractions=DEFAULT_FRACTIONS
    )
    prefix = lake_keys.gold_prefix(plan.dataset_hash)
    stored = []
    for image_id in plan.manifest["image_id"].to_list():
        key = lake_keys.processed_image_key(image_id)
        data = lake.read_bytes(key)
        stored.append({"image_id": image_id, "image_key": key, "sha256": sha256_hex(data), "bytes": len(data)})
    manifest = plan.manifest.join(pl.DataFrame(stored), on="image_id").sort(["split", "image_id"])
    for split in ("train", "val", "test"):
        files = sorted(manifest.filter(pl.col("split") == split)["file"].to_list())
        lake.write_bytes(f"{prefix}/{split}.txt", "".join(f"./{f}\n" for f in files).encode())
    doc = {"path": ".", "train": "train.txt", "val": "val.txt", "test": "test.txt"}
    doc["names"] = dict(enumerate(settings.classes))
    lake.write_bytes(f"{prefix}/data.yaml", yaml.safe_dump(doc, sort_keys=False).encode())
    lake.write_table(f"{prefix}/labels.parquet", plan.labels)
    lake.write_table(f"{prefix}/manifest.parquet", manifest)
    return plan.dataset_hash


def _staged_files(root) -> dict[str, bytes]:
    """What training reads of a staged version: images, label files, list files, data.yaml (without its
    absolute path); not the staging's own copies of the stored tables or its markers."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in ("manifest.parquet", "labels.parquet") or rel.startswith("."):
            continue
        data = path.read_bytes()
        if rel == "data.yaml":
            data = json.dumps({k: v for k, v in yaml.safe_load(data).items() if k != "path"}).encode()
        out[rel] = data
    return out


def test_a_version_stores_only_data_yaml_manifest_and_labels_within_2_percent_of_its_images(
    lake, settings, write_batch
):
    sized = settings.model_copy(update={"image_size": 192})  # 60 images of 192 px, as in the lake benchmark
    for day in (1, 2):
        _ingest(lake, sized, write_batch, f"day-{day}", day, n=30)
    info = build_gold(lake, sized)
    assert sum(info.counts.values()) == 60
    files = {f.key.rsplit("/", 1)[1]: f.size for f in lake.list_files(info.prefix)}
    assert sorted(files) == ["data.yaml", "labels.parquet", "manifest.parquet"]
    image_bytes = sum(f.size for f in lake.list_files(lake_keys.PROCESSED_IMAGES))
    assert sum(files.values()) <= 0.02 * image_bytes, (files, image_bytes)

    # nothing derivable is stored ...
    stored = lake.read_table(lake_keys.gold_manifest_key(info.prefix))
    assert stored.columns == ["image_id", "split", "width", "height", "n_boxes", "classes", "sha256", "bytes"]
    stored_labels = lake.read_table(lake_keys.gold_labels_key(info.prefix))
    assert stored_labels.columns[0] == "image_row" and "image_id" not in stored_labels.columns
    # ... and readers see every column as before: paths, lake keys, labels with their image and split
    manifest, labels = read_version(lake, info.prefix)
    assert manifest.columns[:4] == ["image_id", "split", "file", "label_file"]
    for row in manifest.iter_rows(named=True):
        assert row["file"] == f"images/{row['split']}/{row['image_id']}.jpg"
        assert row["label_file"] == f"labels/{row['split']}/{row['image_id']}.txt"
        assert sha256_hex(lake.read_bytes(row["image_key"])) == row["sha256"]
        assert row["image_key"] == lake_keys.processed_image_key(row["image_id"])
    features, processed_labels = read_processed(lake)
    plan = gold_plan.plan_dataset(
        features, processed_labels, list(sized.classes), seed=sized.split_seed, fractions=info.split_fractions
    )
    assert labels.equals(plan.labels) and labels.schema == plan.labels.schema  # same rows, values and types
    assert labels.height == stored_labels.height > 60


def test_a_version_written_with_its_derivable_parts_keeps_its_hash_and_stages_the_same(
    lake, settings, write_batch, tmp_path
):
    _ingest(lake, settings, write_batch, "day-1", 1)
    new = build_gold(lake, settings)
    before = Lake(base_uri=str(tmp_path / "before"))  # the same processed zone, its version written the earlier way
    for f in lake.list_files("processed"):
        before.write_bytes(f.key, lake.read_bytes(f.key))
    assert _write_previous_manifest_version(before, settings) == new.dataset_hash
    assert {f.key.rsplit("/", 1)[1] for f in before.list_files(new.prefix)} >= {"train.txt", "val.txt", "test.txt"}
    again = build_gold(before, settings)  # the plan names the version: the earlier files are found and kept
    assert again.dataset_hash == new.dataset_hash and again.reused

    old_manifest, old_labels = read_version(before, new.prefix)
    manifest, labels = read_version(lake, new.prefix)
    assert manifest.equals(old_manifest) and manifest.schema == old_manifest.schema
    assert labels.equals(old_labels) and labels.schema == old_labels.schema

    staged = stage_gold(lake, new.prefix, tmp_path / "w1", cache=ContentCache(tmp_path / "c1", 1 << 30))
    staged_before = stage_gold(before, new.prefix, tmp_path / "w2", cache=ContentCache(tmp_path / "c2", 1 << 30))
    files = _staged_files(staged)
    assert files == _staged_files(staged_before)
    assert sum(r.startswith("images/") for r in files) == sum(r.startswith("labels/") for r in files) == 10
    for split in ("train", "val", "test"):  # the list files staging writes are the bytes the lake used to hold
        assert files[f"{split}.txt"] == before.read_bytes(f"{new.prefix}/{split}.txt")
    assert sum(len(files[f"{s}.txt"].splitlines()) for s in ("train", "val", "test")) == 10

    # a remote lake: images fetched into the cache by their derived keys, the same files staged
    remote = Lake(base_uri=f"memory://gold-derived-{tmp_path.name}")
    for f in lake.list_files("processed/images") + lake.list_files(new.prefix):
        remote.write_bytes(f.key, lake.read_bytes(f.key))
    staged_remote = stage_gold(remote, new.prefix, tmp_path / "w3", cache=ContentCache(tmp_path / "c3", 1 << 30))
    assert _staged_files(staged_remote) == files


def test_a_label_table_naming_rows_its_manifest_lacks_is_refused_naming_the_file(lake):
    prefix = lake_keys.gold_prefix("0123456789abcdef")
    manifest = pl.DataFrame({"image_id": ["a" * 64], "split": ["train"], "sha256": ["b" * 64]})
    lake.write_table(lake_keys.gold_manifest_key(prefix), manifest)
    lake.write_table(lake_keys.gold_labels_key(prefix), pl.DataFrame({"image_row": pl.Series([0, 3], dtype=pl.UInt32)}))
    with pytest.raises(gold_plan.GoldDatasetError, match=r"labels\.parquet: image_row must name a row .* \(0 to 0\)"):
        read_version(lake, prefix)
    lake.write_table(lake_keys.gold_manifest_key(prefix), manifest.drop("split"))
    with pytest.raises(gold_plan.GoldDatasetError, match=r"manifest\.parquet: no column split"):
        read_version(lake, prefix)
