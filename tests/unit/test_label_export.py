"""Gold labels as COCO, YOLO and Label Studio documents: pixel and percent boxes, ids, config; atomic folders."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import polars as pl
import pytest

from alumi_pipelines.lib.files import atomic_dir
from alumi_pipelines.lib.vision import label_export as lx
from alumi_pipelines.lib.vision.label_export import LabelExportError

CLASSES = ["scratch", "dent", "pit"]


def manifest() -> pl.DataFrame:
    """Three gold images out of split order: a 200x100 train image, a 64x48 test image, a box-less val image."""
    return pl.DataFrame(
        {
            "image_id": ["b" * 64, "a" * 64, "c" * 64],
            "split": ["test", "train", "val"],
            "file": ["images/test/bbb.jpg", "images/train/aaa.jpg", "images/val/ccc.jpg"],
            "label_file": ["labels/test/bbb.txt", "labels/train/aaa.txt", "labels/val/ccc.txt"],
            "width": [64, 200, 32],
            "height": [48, 100, 32],
            "n_boxes": [1, 2, 0],
        }
    )


def labels() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": ["a" * 64, "a" * 64, "b" * 64, "z" * 64],  # z: an image not in the manifest
            "split": ["train", "train", "test", "train"],
            "class_id": [1, 0, 2, 0],
            "class_name": ["dent", "scratch", "pit", "scratch"],
            "x_center": [0.5, 0.25, 0.5, 0.5],
            "y_center": [0.5, 0.25, 0.5, 0.5],
            "width": [0.2, 0.1, 0.25, 0.1],
            "height": [0.4, 0.1, 0.5, 0.1],
            "source": ["yolo", "yolo", "coco", "yolo"],
        },
        schema_overrides={"class_id": pl.Int32},
    )


def tables(splits=("train", "val", "test")):
    images = lx.export_images(manifest(), splits)
    return images, lx.export_labels(labels(), images, CLASSES)


# -- geometry --------------------------------------------------------------------------------------
def test_pixel_box_is_the_top_left_corner_and_size_in_pixels():
    assert lx.pixel_box(0.5, 0.5, 0.2, 0.4, 200, 100) == pytest.approx((80.0, 30.0, 40.0, 40.0))
    assert lx.pixel_box(0.1, 0.9, 0.2, 0.2, 640, 480) == pytest.approx((0.0, 384.0, 128.0, 96.0))


def test_percent_box_is_the_top_left_corner_and_size_in_percent():
    assert lx.percent_box(0.5, 0.5, 0.2, 0.4) == pytest.approx((40.0, 30.0, 20.0, 40.0))
    assert lx.percent_box(0.25, 0.25, 0.1, 0.1) == pytest.approx((20.0, 20.0, 10.0, 10.0))


@pytest.mark.parametrize("size", [(96, 96), (640, 480), (1920, 1080), (37, 1001)])
def test_boxes_round_trip_to_the_same_normalised_coordinates(size):
    w_img, h_img = size
    box = (0.314159, 0.271828, 0.123457, 0.098765)  # six decimals, like the gold labels
    x, y, w, h = lx.pixel_box(*box, w_img, h_img)
    back = ((x + w / 2) / w_img, (y + h / 2) / h_img, w / w_img, h / h_img)
    assert back == pytest.approx(box, abs=1e-6)
    px, py, pw, ph = lx.percent_box(*box)
    back = ((px + pw / 2) / 100, (py + ph / 2) / 100, pw / 100, ph / 100)
    assert back == pytest.approx(box, abs=1e-6)


# -- tables ----------------------------------------------------------------------------------------
def test_images_come_in_split_order_then_by_id_and_only_the_chosen_splits():
    images, boxes = tables()
    assert images["split"].to_list() == ["train", "val", "test"]
    assert images.columns == ["image_id", "split", "file", "label_file", "width", "height"]
    assert boxes.height == 3  # the box of an image outside the manifest is not exported
    images, boxes = tables(("test",))
    assert images["image_id"].to_list() == ["b" * 64] and boxes["image_id"].to_list() == ["b" * 64]


def test_boxes_must_match_the_class_map():
    images = lx.export_images(manifest(), ("train",))
    with pytest.raises(LabelExportError, match="outside the class map"):
        lx.export_labels(labels(), images, ["scratch"])
    renamed = labels().with_columns(class_name=pl.lit("crack"))
    with pytest.raises(LabelExportError, match="names class 'crack' but id"):
        lx.export_labels(renamed, images, CLASSES)


def test_images_need_a_pixel_size_and_the_manifest_its_columns():
    with pytest.raises(LabelExportError, match="without a pixel size"):
        lx.export_images(manifest().with_columns(width=pl.Series([64, None, 32])), ("train",))
    with pytest.raises(LabelExportError, match="no column width"):
        lx.export_images(manifest().drop("width"))


def test_input_checks_name_the_choices():
    assert lx.check_format("labelstudio") == "labelstudio"
    with pytest.raises(LabelExportError, match=r"use --format coco \| yolo \| labelstudio"):
        lx.check_format("voc")
    assert lx.check_splits(["test", "train", "test"]) == ("train", "test")
    assert lx.check_splits(None) == ("train", "val", "test")
    with pytest.raises(LabelExportError, match="unknown split 'holdout'"):
        lx.check_splits(["train", "holdout"])
    with pytest.raises(LabelExportError, match="use --images copy"):
        lx.check_image_mode("link")
    assert lx.check_dataset_hash("d75d0c6e3b89def6") == "d75d0c6e3b89def6"
    for bad in ("../gold", "XYZ", "abc", "a" * 65):
        with pytest.raises(LabelExportError, match="not a dataset content hash"):
            lx.check_dataset_hash(bad)


def test_class_names_come_from_data_yaml_in_id_order():
    assert lx.class_names({"names": {1: "dent", 0: "scratch", 2: "pit"}}) == CLASSES
    assert lx.class_names({"names": CLASSES}) == CLASSES
    with pytest.raises(LabelExportError, match="class ids must be 0..n-1"):
        lx.class_names({"names": {0: "scratch", 2: "pit"}})
    with pytest.raises(LabelExportError, match="no class 'names'"):
        lx.class_names({"train": "images/train"})


# -- COCO ------------------------------------------------------------------------------------------
def test_coco_ids_categories_pixels_and_areas():
    images, boxes = tables()
    doc = lx.coco_document(images, boxes, CLASSES, "d75d0c6e3b89def6")
    assert doc["info"]["dataset_hash"] == "d75d0c6e3b89def6" and doc["info"]["splits"] == ["train", "val", "test"]
    assert doc["categories"] == [
        {"id": 1, "name": "scratch", "supercategory": "defect"},
        {"id": 2, "name": "dent", "supercategory": "defect"},
        {"id": 3, "name": "pit", "supercategory": "defect"},
    ]
    assert doc["images"] == [
        {"id": 1, "file_name": "images/train/aaa.jpg", "width": 200, "height": 100},
        {"id": 2, "file_name": "images/val/ccc.jpg", "width": 32, "height": 32},
        {"id": 3, "file_name": "images/test/bbb.jpg", "width": 64, "height": 48},
    ]
    anns = doc["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3]
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(1, 1), (1, 2), (3, 3)]  # scratch first: class order
    assert anns[0]["bbox"] == pytest.approx([40.0, 20.0, 20.0, 10.0]) and anns[0]["area"] == pytest.approx(200.0)
    assert anns[1]["bbox"] == pytest.approx([80.0, 30.0, 40.0, 40.0]) and anns[1]["area"] == pytest.approx(1600.0)
    assert anns[2]["bbox"] == pytest.approx([24.0, 12.0, 16.0, 24.0]) and anns[2]["area"] == pytest.approx(384.0)
    assert all(a["iscrowd"] == 0 for a in anns)


# -- Label Studio ----------------------------------------------------------------------------------
def test_labelstudio_tasks_carry_the_gold_boxes_as_annotations_in_percent():
    images, boxes = tables()
    tasks = lx.labelstudio_tasks(images, boxes, CLASSES)
    assert [t["data"]["image"] for t in tasks] == [
        "/data/local-files/?d=images/train/aaa.jpg",
        "/data/local-files/?d=images/val/ccc.jpg",
        "/data/local-files/?d=images/test/bbb.jpg",
    ]
    assert tasks[0]["data"]["image_id"] == "a" * 64 and tasks[0]["data"]["split"] == "train"
    assert all("predictions" not in t and len(t["annotations"]) == 1 for t in tasks)
    assert tasks[1]["annotations"][0]["result"] == []  # labelled defect-free, not unlabelled
    dent = tasks[0]["annotations"][0]["result"][1]
    assert {k: dent[k] for k in ("type", "from_name", "to_name", "original_width", "original_height")} == {
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": 200,
        "original_height": 100,
    }
    value = dent["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == pytest.approx((40.0, 30.0, 20.0, 40.0))
    assert value["rotation"] == 0 and value["rectanglelabels"] == ["dent"]
    ids = [r["id"] for t in tasks for r in t["annotations"][0]["result"]]
    assert len(set(ids)) == len(ids)


def test_labelstudio_config_lists_the_classes_in_id_order():
    names = ["scratch", "oil & water", 'dent "deep"', "pit<1mm"]
    root = ET.fromstring(lx.labelstudio_config(names))
    image, rect = root.find("Image"), root.find("RectangleLabels")
    assert image.attrib == {"name": "image", "value": "$image"}
    assert rect.attrib == {"name": "label", "toName": "image"}
    assert [label.attrib["value"] for label in rect.findall("Label")] == names


def test_yolo_data_yaml_keeps_only_the_exported_splits():
    doc = {"path": ".", "train": "images/train", "val": "images/val", "test": "images/test", "names": {0: "a"}}
    assert lx.yolo_data_yaml(doc, ("train", "val", "test")) == doc
    assert lx.yolo_data_yaml(doc, ("val",)) == {"path": ".", "val": "images/val", "names": {0: "a"}}


# -- the atomic folder -----------------------------------------------------------------------------
def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "annotations.json").write_text("{")
            raise RuntimeError("crash mid-export")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "one"


def test_atomic_dir_replaces_only_when_asked(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    with atomic_dir(out) as tmp:  # an empty folder may be filled
        (tmp / "a.txt").write_text("one")
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_dir(out, replace=True) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # no stale file of the old export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left
