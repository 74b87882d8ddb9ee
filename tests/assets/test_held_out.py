"""An image with a rejected annotation record is held out of gold, never a defect-free example."""

import json

import cv2
import numpy as np
import polars as pl
from dagster import DagsterInstance, materialize

from alumi_pipelines.assets import corrections, gold, processed, raw
from alumi_pipelines.lib.vision import formats
from alumi_pipelines.partitions import landing_batches
from alumi_pipelines.resources import lake_keys

CLASSES = "scratch\ndent\npit\ncrack\nstain\n"


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".png", rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))[1].tobytes()


# label file per image stem; None: no label file (unlabelled)
YOLO_CORPUS = {
    "clean1": "0 0.5 0.5 0.2 0.2\n",
    "clean2": "1 0.3 0.3 0.1 0.2\n2 0.7 0.7 0.2 0.1\n",
    "clean3": "3 0.5 0.5 0.4 0.4\n",
    "clean4": "4 0.4 0.6 0.2 0.2\n",
    "empty": "",  # an explicitly empty annotation: no defects
    "nan": "0 nan 0.5 0.2 0.2\n",
    "far": "0 3.5 0.5 0.2 0.2\n",
    "unknown_class": "9 0.5 0.5 0.2 0.2\n",
    "garbage": b"\x00\xff\x13binary\x00garbage\x89",
    "mixed": "0 0.5 0.5 0.2 0.2\n1 0.5 inf 0.2 0.2\n",
    "unlabelled": None,
}
CLEAN = {"clean1", "clean2", "clean3", "clean4", "empty"}
HELD_OUT = {"nan", "far", "unknown_class", "garbage", "mixed"}


def _write_yolo_batch(lake, batch):
    root = f"landing/{batch}"
    for i, (stem, label) in enumerate(sorted(YOLO_CORPUS.items())):
        lake.write_bytes(f"{root}/images/{stem}.png", _png(i))
        if label is not None:
            lake.write_bytes(f"{root}/labels/{stem}.txt", label if isinstance(label, bytes) else label.encode())
    lake.write_bytes(f"{root}/classes.txt", CLASSES.encode())
    lake.write_bytes(f"{root}/_batch.json", json.dumps({"format": "yolo", "classes": None}).encode())


def test_a_corpus_with_rejected_annotations_yields_gold_of_exactly_the_cleanly_labelled_images(lake, settings):
    instance = DagsterInstance.ephemeral()
    _write_yolo_batch(lake, "yolo-1")
    instance.add_dynamic_partitions(landing_batches.name, ["yolo-1"])
    resources = {"lake": lake, "pipeline_settings": settings}
    ingested = materialize(
        [raw.raw_ingestion, processed.processing],
        instance=instance,
        partition_key="yolo-1",
        resources=resources,
    )
    assert ingested.success
    raw_meta = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in ingested.get_asset_materialization_events()
    }
    assert raw_meta["raw_images"]["held_out_of_gold"].value == len(HELD_OUT)

    manifest = lake.read_table(lake_keys.raw_manifest_key("yolo-1"))
    stem = lambda path: path.rsplit("/", 1)[-1].split(".")[0]  # noqa: E731
    held = {stem(p): r for p, r in manifest.select("source_path", "held_out").iter_rows() if r}
    assert set(held) == HELD_OUT
    assert "not a finite number" in held["nan"] and "outside" in held["far"]
    assert "class id 9" in held["unknown_class"] and "NUL" in held["garbage"] and "inf" in held["mixed"]

    quarantine = lake.read_table(lake_keys.quarantine_table_key("yolo-1"))
    listed = {stem(p) for p in quarantine.filter(pl.col("stage") == "held_out")["path"].to_list()}
    assert listed == HELD_OUT

    built = materialize([gold.gold_dataset], instance=instance, resources=resources)
    assert built.success
    meta = built.get_asset_materialization_events()[0].materialization.metadata
    assert meta["held_out_images"].value == len(HELD_OUT)
    assert meta["images"].value == len(CLEAN)

    names = dict(manifest.select("image_id", "source_path").iter_rows())
    gold_manifest = gold.read_gold_manifest(lake)
    assert {stem(names[i]) for i in gold_manifest["image_id"].to_list()} == CLEAN
    boxes = {stem(names[i]): n for i, n in gold_manifest.select("image_id", "n_boxes").iter_rows()}
    assert boxes == {"clean1": 1, "clean2": 2, "clean3": 1, "clean4": 1, "empty": 0}
    assert gold.read_gold_pointer(lake)["held_out"] == len(HELD_OUT)
    assert not any(manifest.filter(pl.col("held_out") != "")["labelled"])  # unlabelled until reviewed

    # review: a QA correction labels the held-out image "nan" (one scratch, 80x64 pixels): it enters gold
    nan_id = next(i for i, p in names.items() if stem(p) == "nan")
    csv = (
        "correction_id,image_id,action,class_name,x1,y1,x2,y2,author,timestamp,tool\n"
        f"qa-1,{nan_id},add,scratch,10,10,30,30,qa-anna,2026-11-30T10:00:00Z,review\n"
    )
    lake.write_bytes(lake_keys.corrections_incoming_key("qa-review.csv"), csv.encode())
    reviewed = materialize([corrections.label_corrections, gold.gold_dataset], instance=instance, resources=resources)
    assert reviewed.success
    gold_manifest = gold.read_gold_manifest(lake)
    assert {stem(names[i]) for i in gold_manifest["image_id"].to_list()} == CLEAN | {"nan"}
    assert gold.read_gold_pointer(lake)["held_out"] == len(HELD_OUT) - 1


def _parse(tmp_path, fmt, files):
    for rel, content in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    listing = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    parsed = formats.parse_batch(fmt, listing, lambda rel: (tmp_path / rel).read_bytes())
    return {im.image_path.rsplit("/", 1)[-1]: im for im in parsed.images}


def test_explicitly_empty_voc_and_labelme_files_mean_no_defects_and_bad_ones_hold_out(tmp_path):
    voc = _parse(
        tmp_path / "voc",
        "voc",
        {
            "a.png": _png(1),
            "a.xml": "<annotation><filename>a.png</filename></annotation>",
            "b.png": _png(2),
            "b.xml": "<annotation><filename>b.png</filename><object><name>dent</name><bndbox><xmin>nan</xmin>"
            "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
            "c.png": _png(3),
            "c.xml": "<annotation><unclosed>",
        },
    )
    assert voc["a.png"].labelled and voc["a.png"].boxes == [] and voc["a.png"].problems == []
    assert voc["b.png"].problems and "xmin" in voc["b.png"].problems[0]
    assert voc["c.png"].problems and "XML" in voc["c.png"].problems[0]

    labelme = _parse(
        tmp_path / "labelme",
        "labelme",
        {
            "a.png": _png(1),
            "a.json": json.dumps({"imagePath": "a.png", "shapes": []}),
            "b.png": _png(2),
            "b.json": json.dumps({"imagePath": "b.png", "shapes": [{"label": "dent", "points": [[1, 1]]}]}),
            "c.png": _png(3),
            "c.json": "{not json",
        },
    )
    assert labelme["a.png"].labelled and labelme["a.png"].boxes == [] and labelme["a.png"].problems == []
    assert labelme["b.png"].problems and labelme["c.png"].problems

    coco = _parse(
        tmp_path / "coco",
        "coco",
        {
            "a.png": _png(1),
            "b.png": _png(2),
            "ann.json": json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
                    "categories": [{"id": 1, "name": "dent"}],
                    "annotations": [{"id": 7, "image_id": 2, "category_id": 5, "bbox": [1, 1, 4, 4]}],
                }
            ),
        },
    )
    assert coco["a.png"].labelled and coco["a.png"].problems == []  # no annotations: defect-free
    assert coco["b.png"].problems == ["annotation id 7: category_id 5 is not in 'categories'"]
