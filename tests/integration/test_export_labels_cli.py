"""`alumi export-labels`: a gold dataset in the lake as COCO, YOLO and Label Studio folders, checked by value."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import polars as pl
import pytest
import yaml
from cli_helpers import REPO, run

sys.path.insert(0, str(REPO / "tests" / "training"))

from gold_factory import TINY_CLASSES, write_tiny_gold  # noqa: E402

ALUMI = [sys.executable, "-m", "alumi_pipelines"]


@pytest.fixture
def env(cli_env):
    return {**cli_env, "ALUMI_LAKE_URI": str(Path(cli_env["ALUMI_HOME"]) / "lake")}


@pytest.fixture
def lake(env):
    from alumi_pipelines.resources.lake import Lake

    return Lake(base_uri=env["ALUMI_LAKE_URI"])


@pytest.fixture
def gold(lake):
    """The tiny gold dataset (24 images, 36 boxes, 3 classes); returns its pointer, manifest and labels."""
    pointer = write_tiny_gold(lake)
    prefix = pointer["prefix"]
    return {
        **pointer,
        "manifest": lake.read_table(f"{prefix}/manifest.parquet"),
        "labels": lake.read_table(f"{prefix}/labels.parquet"),
    }


def export(env, *args) -> str:
    """Run `alumi export-labels`; its one line of output."""
    out = run([*ALUMI, "export-labels", *args], env).stdout.strip().splitlines()
    assert len(out) == 1, out
    return out[0]


def refused(env, *args) -> str:
    """Run `alumi export-labels` expecting bad input: exit 2, one line on stderr, no traceback."""
    proc = subprocess.run([*ALUMI, "export-labels", *map(str, args)], env=env, capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    assert lines[0].startswith("alumi export-labels: ")
    return lines[0]


def gold_boxes(labels: pl.DataFrame) -> dict[str, list[tuple]]:
    """image_id -> sorted (class_name, x_center, y_center, width, height) of the gold label table."""
    out: dict[str, list[tuple]] = {}
    for image_id, name, x, y, w, h in labels.select(
        "image_id", "class_name", "x_center", "y_center", "width", "height"
    ).iter_rows():
        out.setdefault(image_id, []).append((name, x, y, w, h))
    return {k: sorted(v) for k, v in out.items()}


def assert_same_boxes(got: dict[str, list[tuple]], want: dict[str, list[tuple]]) -> None:
    """Same images, same classes, every coordinate within 1e-6 (normalised: 1e-6 x the image size in pixels)."""
    assert sorted(got) == sorted(want)
    for image_id, boxes in want.items():
        mine = sorted(got[image_id])
        assert [b[0] for b in mine] == [b[0] for b in boxes], image_id
        for a, b in zip(mine, boxes):
            assert a[1:] == pytest.approx(b[1:], abs=1e-6), (image_id, a, b)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pixel_size(data: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return image.shape[1], image.shape[0]


def test_coco_export_holds_every_gold_box_in_pixels(env, lake, gold, tmp_path):
    out = tmp_path / "coco"
    line = export(env, "--format", "coco", "--out", out)
    assert line.startswith("coco: 24 images (train 16, val 4, test 4), 36 boxes, 3 classes")
    assert gold["dataset_hash"] in line and "24 images copied" in line
    doc = json.loads((out / "annotations.json").read_text())
    assert doc["info"]["dataset_hash"] == gold["dataset_hash"]
    assert doc["categories"] == [
        {"id": i + 1, "name": c, "supercategory": "defect"} for i, c in enumerate(TINY_CLASSES)
    ]
    assert len(doc["images"]) == gold["manifest"].height == 24
    assert len(doc["annotations"]) == gold["labels"].height == 36
    assert sorted(a["id"] for a in doc["annotations"]) == list(range(1, 37))
    assert sorted(i["id"] for i in doc["images"]) == list(range(1, 25))
    names = {c["id"]: c["name"] for c in doc["categories"]}
    per_class = Counter(names[a["category_id"]] for a in doc["annotations"])
    assert per_class == Counter(gold["labels"]["class_name"].to_list())

    images = {i["id"]: i for i in doc["images"]}
    for entry in images.values():  # copied byte for byte, with the pixel size the document says
        data = (out / entry["file_name"]).read_bytes()
        assert data == lake.read_bytes(f"{gold['prefix']}/{entry['file_name']}")
        assert pixel_size(data) == (entry["width"], entry["height"])
    got: dict[str, list[tuple]] = {}
    for a in doc["annotations"]:
        image = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and a["area"] == pytest.approx(w * h)
        W, H = image["width"], image["height"]
        box = (names[a["category_id"]], (x + w / 2) / W, (y + h / 2) / H, w / W, h / H)
        got.setdefault(Path(image["file_name"]).stem, []).append(box)
    assert_same_boxes(got, gold_boxes(gold["labels"]))

    # the project's own COCO importer reads the export back to the same boxes
    from alumi_pipelines.lib.vision import formats

    files = [f for f in tree(out) if f != "alumi_export.json"]
    parsed = formats.parse_batch("coco", files, lambda rel: (out / rel).read_bytes(), None)
    assert parsed.rejections == [] and len(parsed.images) == 24
    assert sum(len(i.boxes) for i in parsed.images) == 36


def test_yolo_export_is_the_gold_folder_and_an_older_version_by_hash(env, lake, gold, tmp_path):
    out = tmp_path / "yolo"
    assert export(env, "--format", "yolo", "--out", out).startswith("yolo: 24 images")
    files = tree(out)
    prefix = gold["prefix"]
    assert files["data.yaml"] == lake.read_bytes(f"{prefix}/data.yaml")
    for row in gold["manifest"].iter_rows(named=True):
        assert files[row["file"]] == lake.read_bytes(f"{prefix}/{row['file']}")
        assert files[row["label_file"]] == lake.read_bytes(f"{prefix}/{row['label_file']}")
    lines = [line for f, data in files.items() if f.startswith("labels/") for line in data.decode().splitlines()]
    assert len(lines) == gold["labels"].height
    record = json.loads(files["alumi_export.json"])
    assert record["boxes"] == 36 and record["dataset_hash"] == gold["dataset_hash"]

    # a newer gold dataset becomes current; the first one is still exported by its hash, one split, no images
    newer = write_tiny_gold(lake, n_images=12, seed=1)
    assert newer["dataset_hash"] != gold["dataset_hash"]
    out = tmp_path / "yolo-val"
    line = export(
        env, "--format", "yolo", "--out", out, "--dataset", gold["dataset_hash"], "--split", "val", "--images", "none"
    )
    assert line.startswith("yolo: 4 images (val 4)") and "0 images copied" in line
    files = tree(out)
    val = gold["manifest"].filter(pl.col("split") == "val")
    assert sorted(f for f in files if f.startswith(("labels/", "images/"))) == sorted(val["label_file"])
    assert all(files[f] == lake.read_bytes(f"{prefix}/{f}") for f in val["label_file"])
    data_yaml = yaml.safe_load(files["data.yaml"])
    assert data_yaml["val"] == "images/val" and "train" not in data_yaml and "test" not in data_yaml
    assert data_yaml["names"] == dict(enumerate(TINY_CLASSES))


def test_labelstudio_export_holds_the_gold_boxes_as_annotations(env, lake, gold, tmp_path):
    out = tmp_path / "ls"
    assert export(env, "--format", "labelstudio", "--out", out).startswith("labelstudio: 24 images")
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == 24
    results = [r for t in tasks for r in t["annotations"][0]["result"]]
    assert len(results) == 36 and all("predictions" not in t for t in tasks)
    got: dict[str, list[tuple]] = {}
    for task in tasks:
        url = task["data"]["image"]
        assert url.startswith("/data/local-files/?d=images/")
        data = (out / unquote(url.split("?d=", 1)[1])).read_bytes()  # relative to the document root: --out
        assert pixel_size(data) == (96, 96)
        for r in task["annotations"][0]["result"]:
            assert (r["type"], r["from_name"], r["to_name"]) == ("rectanglelabels", "label", "image")
            assert (r["original_width"], r["original_height"]) == pixel_size(data)
            v = r["value"]
            assert v["rotation"] == 0
            box = (v["x"] + v["width"] / 2, v["y"] + v["height"] / 2, v["width"], v["height"])
            got.setdefault(task["data"]["image_id"], []).append((v["rectanglelabels"][0], *(c / 100 for c in box)))
    assert_same_boxes(got, gold_boxes(gold["labels"]))
    config = ET.fromstring((out / "config.xml").read_text())
    assert [label.attrib["value"] for label in config.iter("Label")] == list(TINY_CLASSES)
    assert config.find("Image").attrib["value"] == "$image"


def test_a_forced_export_gives_identical_bytes(env, gold, tmp_path):
    out = tmp_path / "exports" / "again"  # its parent is made too
    export(env, "--format", "coco", "--out", out)
    first = tree(out)
    assert "--force" in refused(env, "--format", "coco", "--out", out)
    export(env, "--format", "coco", "--out", out, "--force")
    assert tree(out) == first
    assert [p.name for p in out.parent.iterdir()] == ["again"]  # no temporary folder left behind


def test_bad_input_is_one_line_and_exit_2(env, lake, tmp_path):
    out = tmp_path / "exports" / "out"
    assert "no gold dataset yet" in refused(env, "--format", "coco", "--out", out)
    write_tiny_gold(lake, n_images=12)
    assert "unknown format 'voc'" in refused(env, "--format", "voc", "--out", out)
    assert "unknown split 'holdout'" in refused(env, "--format", "coco", "--out", out, "--split", "holdout")
    line = refused(env, "--format", "coco", "--out", out, "--dataset", "0123456789abcdef")
    assert "unknown dataset hash 0123456789abcdef" in line and "omit --dataset" in line
    assert "not a dataset content hash" in refused(env, "--format", "coco", "--out", out, "--dataset", "../x")
    assert "unknown image mode" in refused(env, "--format", "coco", "--out", out, "--images", "link")
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    assert "is not empty" in refused(env, "--format", "yolo", "--out", out)
    assert "not an earlier export" in refused(env, "--format", "yolo", "--out", out, "--force")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and [p.name for p in out.parent.iterdir()] == ["out"]
