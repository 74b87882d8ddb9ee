"""Label corrections: parsing the three inputs, every reject reason, apply semantics, conflicts, idempotency."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime

import polars as pl
import pytest

from alumi_pipelines.lib.vision import corrections as cx
from alumi_pipelines.lib.vision.labels import ClassMap, label_schema

CLASSES = ClassMap.of(["scratch", "dent", "pit"], {"Scratches": "scratch"})
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
IMG_A = hashlib.sha256(b"image a").hexdigest()  # 200 x 100, two boxes
IMG_B = hashlib.sha256(b"image b").hexdigest()  # 640 x 480, one box
IMG_C = hashlib.sha256(b"image c").hexdigest()  # 320 x 240, no labels
UNKNOWN = hashlib.sha256(b"not in the lake").hexdigest()

IMAGES = pl.DataFrame(
    {
        "image_id": [IMG_A, IMG_B, IMG_C, IMG_A],
        "orig_width": [200, 640, 320, 200],
        "orig_height": [100, 480, 240, 100],
        "batch": ["b1", "b1", "b2", "b0"],  # IMG_A also arrived in batch b0: its first batch is used
    }
)


def _label(image_id: str, name: str, box: tuple, width: int, height: int, batch: str = "b1") -> dict:
    x1, y1, x2, y2 = box
    _, class_id = CLASSES.resolve(name)
    return {
        "image_id": image_id,
        "class_name": name,
        "class_id": class_id,
        "x_center": (x1 + x2) / 2 / width,
        "y_center": (y1 + y2) / 2 / height,
        "width": (x2 - x1) / width,
        "height": (y2 - y1) / height,
        "source": "yolo",
        "source_file": f"labels/{image_id[:6]}.txt",
        "batch": batch,
    }


A_SCRATCH = (20.0, 10.0, 60.0, 50.0)
A_DENT = (100.0, 20.0, 160.0, 80.0)
B_PIT = (300.0, 200.0, 340.0, 260.0)
BASE = pl.DataFrame(
    [
        _label(IMG_A, "scratch", A_SCRATCH, 200, 100),
        _label(IMG_A, "dent", A_DENT, 200, 100),
        _label(IMG_B, "pit", B_PIT, 640, 480),
    ],
    schema=label_schema(),
    orient="row",
)


def edge(feedback_id: str, kind: str = "missed_defect", box=(10, 10, 50, 40), **extra) -> dict:
    record = {
        "feedback_id": feedback_id,
        "seq": 1,
        "kind": kind,
        "image_sha256": IMG_A,
        "image_ref": None,
        "box": box if isinstance(box, dict) else dict(zip(("x1", "y1", "x2", "y2"), box)),
        "original_box": None,
        "class_name": "scratch",
        "author": "op-anna",
        "comment": "",
        "model_version": "v3",
        "token_subject": None,
        "device_id": "jetson-07",
        "created_at": "2026-05-01T08:00:00.000Z",
    }
    record.update(extra)
    return record


def jsonl(*records) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, sort_keys=True)) + "\n" for r in records).encode()


def parsed(name: str, data: bytes) -> list[cx.Correction]:
    records, rejects = cx.parse_incoming(name, data)
    assert rejects == []
    return records


def validated(records) -> list[cx.Correction]:
    valid, rejects = cx.validate(records, IMAGES, CLASSES, now=NOW)
    assert rejects == []
    return valid


def boxes_of(labels: pl.DataFrame, image_id: str, width: int, height: int) -> list[tuple]:
    """(class_name, x1, y1, x2, y2) pixel boxes of one image, rounded to 1e-6, sorted."""
    out = []
    for r in labels.filter(pl.col("image_id") == image_id).iter_rows(named=True):
        x1 = (r["x_center"] - r["width"] / 2) * width
        y1 = (r["y_center"] - r["height"] / 2) * height
        out.append(
            (
                r["class_name"],
                round(x1, 6),
                round(y1, 6),
                round(x1 + r["width"] * width, 6),
                round(y1 + r["height"] * height, 6),
            )
        )
    return sorted(out)


def parquet_bytes(df: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    return buffer.getvalue()


def run(*records: cx.Correction, labels: pl.DataFrame = BASE) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    overlay, changes = cx.apply(labels, list(records), CLASSES)
    return overlay, changes, cx.corrected_labels(labels, overlay, changes)


# -- parsing -------------------------------------------------------------------------------------------


def test_edge_jsonl_fields_map_to_corrections():
    data = jsonl(
        edge("f-add"),
        "",
        edge("f-fp", "false_positive", A_SCRATCH),
        edge("f-fix", "corrected_box", (22, 12, 64, 52), original_box=dict(zip(("x1", "y1", "x2", "y2"), A_SCRATCH))),
    )
    records = parsed("edge-jetson-07-1-3.jsonl", data)
    assert [(r.correction_id, r.action, r.level, r.origin, r.line) for r in records] == [
        ("f-add", "add", "operator", "jetson-07", 1),
        ("f-fp", "remove", "operator", "jetson-07", 3),
        ("f-fix", "replace", "operator", "jetson-07", 4),
    ]
    assert records[0].box == (10.0, 10.0, 50.0, 40.0) and records[0].image_id == IMG_A
    assert records[2].match_box == A_SCRATCH and records[2].box == (22.0, 12.0, 64.0, 52.0)
    assert {r.timestamp for r in records} == {"2026-05-01T08:00:00.000Z"}


def test_edge_jsonl_bad_lines_rejected_with_line_numbers():
    no_box = edge("f-3")
    del no_box["box"]
    data = jsonl(
        edge("f-1"),
        '{"feedback_id": "f-2", "kind": ',  # truncated
        no_box,
        edge("f-4", kind="thumbs_up"),
        "[1, 2]",
        edge("f-6", image_sha256=None),
        edge("f-7", box={"x1": "left", "y1": 0, "x2": 5, "y2": 5}),
    )
    records, rejects = cx.parse_incoming("edge-x-1-7.jsonl", data)
    assert [r.correction_id for r in records] == ["f-1"]
    by_line = {r["line"]: r for r in rejects}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7]
    assert by_line[2]["reason"].startswith("malformed JSON line") and by_line[2]["record_id"] is None
    assert by_line[3] == {
        "file": "edge-x-1-7.jsonl",
        "line": 3,
        "record_id": "f-3",
        "reason": "field 'box' must be an object with x1, y1, x2, y2 (pixels)",
    }
    assert "'kind' is 'thumbs_up'" in by_line[4]["reason"]
    assert "expected an object" in by_line[5]["reason"]
    assert "neither 'image_sha256' nor 'image_ref'" in by_line[6]["reason"]
    assert "'box.x1' must be a number" in by_line[7]["reason"]


def test_edge_image_ref_resolves_through_names():
    record = edge("f-ref", image_sha256=None, image_ref="cam2/frames/0001.png")
    resolved, _ = cx.parse_incoming("e.jsonl", jsonl(record), names={"0001.png": IMG_B})
    assert resolved[0].image_id == IMG_B
    unresolved = parsed("e.jsonl", jsonl(record))
    _, rejects = cx.validate(unresolved, IMAGES, CLASSES, now=NOW)
    assert (
        rejects[0]["reason"] == "unknown image: image reference 'cam2/frames/0001.png' does not resolve to an image id"
    )


def test_edge_queue_output_parses(tmp_path):
    """The JSONL the edge package's feedback queue writes is the format parsed here."""
    feedback = pytest.importorskip("alumi_edge.feedback")
    queue = feedback.FeedbackQueue(tmp_path / "queue.db", "jetson 07")
    try:
        for kind, box in (("missed_defect", (5, 5, 40, 30)), ("false_positive", A_DENT)):
            queue.add(
                {
                    "kind": kind,
                    "image_sha256": IMG_A,
                    "image_ref": None,
                    "box": box if isinstance(box, dict) else dict(zip(("x1", "y1", "x2", "y2"), box)),
                    "original_box": None,
                    "class_name": "dent",
                    "author": "op-ben",
                    "comment": "",
                    "model_version": "v1",
                }
            )
        batch = queue.next_batch()
    finally:
        queue.close()
    records, rejects = cx.parse_incoming(batch.name, batch.jsonl())
    assert rejects == [] and batch.name == "edge-jetson-07-1-2.jsonl"
    valid, rejects = cx.validate(records, IMAGES, CLASSES)  # stamped with the real clock
    assert rejects == []
    assert [(v.action, v.origin, v.author) for v in valid] == [
        ("add", "jetson 07", "op-ben"),
        ("remove", "jetson 07", "op-ben"),
    ]
    _, changes, corrected = run(*valid)
    assert changes["result"].to_list() == ["applied", "applied"]
    assert boxes_of(corrected, IMG_A, 200, 100) == [("dent", 5.0, 5.0, 40.0, 30.0), ("scratch", *A_SCRATCH)]


def test_qa_csv_parsing():
    text = (
        "\ufeffcorrection_id,image_id,action,class_name,x1,y1,x2,y2,author,timestamp,tool\n"
        f"qa-1,{IMG_B},add,dent,10,20,110,120,qa-carla,2026-05-02T10:00:00+02:00,CVAT 2.3\n"
        f"qa-2,{IMG_A.upper()},remove,scratch,20,10,60,50,qa-carla,2026-05-02T10:05:00Z,\n"
        f"qa-3,{IMG_A},rename,scratch,20,10,60,50,qa-carla,2026-05-02T10:05:00Z,CVAT\n"
        f"qa-4,{IMG_A},add,scratch,twenty,10,60,50,qa-carla,2026-05-02T10:05:00Z,CVAT\n"
        "\n"
        f'qa-5,"{IMG_C}",add,"Scratches",1,2,3,4,"Doe, Jane",2026-05-02T10:06:00Z,CVAT\n'
    )
    records, rejects = cx.parse_incoming("qa/review-0502.csv", text.encode())
    assert [(r.correction_id, r.action, r.level, r.origin, r.line) for r in records] == [
        ("qa-1", "add", "qa", "CVAT 2.3", 2),
        ("qa-2", "remove", "qa", "qa-csv", 3),
        ("qa-5", "add", "qa", "CVAT", 7),
    ]
    assert records[1].image_id == IMG_A and records[0].box == (10.0, 20.0, 110.0, 120.0)
    assert records[2].author == "Doe, Jane"
    assert [(r["line"], r["record_id"]) for r in rejects] == [(4, "qa-3"), (5, "qa-4")]
    assert "'action' is 'rename'" in rejects[0]["reason"] and "'x1' must be a number" in rejects[1]["reason"]
    valid = validated(records)
    assert valid[0].timestamp == "2026-05-02T08:00:00.000000Z"  # +02:00 made UTC
    assert valid[2].class_name == "scratch"  # alias resolved


def test_qa_csv_semicolons_and_missing_columns():
    semi = (
        "correction_id;image_id;action;class_name;x1;y1;x2;y2;author;timestamp;tool\n"
        f"q1;{IMG_B};add;pit;1;2;30;40;qa;2026-05-02T10:00:00Z;x\n"
    )
    assert [r.box for r in parsed("a.csv", semi.encode())] == [(1.0, 2.0, 30.0, 40.0)]
    records, rejects = cx.parse_incoming("b.csv", b"correction_id,image_id,action\nq1,abc,add\n")
    assert records == []
    assert rejects == [
        {
            "file": "b.csv",
            "line": 1,
            "record_id": None,
            "reason": "CSV header is missing column(s) class_name, x1, y1, x2, y2, author, timestamp, tool; "
            "expected correction_id, image_id, action, class_name, x1, y1, x2, y2, author, timestamp, tool",
        }
    ]


def test_unsupported_and_undecodable_files_rejected():
    assert cx.parse_incoming("notes.txt", b"hello") == (
        [],
        [
            {
                "file": "notes.txt",
                "line": None,
                "record_id": None,
                "reason": "unsupported file type '.txt': expected .jsonl, .json or .csv",
            }
        ],
    )
    records, rejects = cx.parse_incoming("e.jsonl", b"\xff\xfe\x00bad")
    assert records == [] and rejects[0]["reason"].startswith("not UTF-8 text")


# -- COCO relabels ---------------------------------------------------------------------------------------


def coco(images: list[dict], annotations: list[dict], **info) -> bytes:
    return json.dumps(
        {
            "info": {"contributor": "qa-dana", "date_created": "2026-05-03T09:00:00Z", "tool": "labelstudio", **info},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}, {"id": 3, "name": "Pit"}],
        }
    ).encode()


def test_coco_image_is_a_full_relabel():
    data = coco(
        [
            {"id": 7, "file_name": f"{IMG_A}.jpg", "width": 200, "height": 100},
            {
                "id": 8,
                "file_name": "whatever.png",
                "sha256": IMG_C,
                "author": "qa-erik",
                "timestamp": "2026-05-03T10:00:00Z",
            },
        ],
        [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 30, 20]},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [100, 20, 60, 60]},
            {"id": 3, "image_id": 8, "category_id": 1, "bbox": [0, 0, 320, 240]},
        ],
    )
    records = parsed("qa/export-0503.json", data)
    assert [(r.correction_id, r.action, r.level, r.origin, r.author) for r in records] == [
        ("export-0503.json#7", "relabel", "qa", "labelstudio", "qa-dana"),
        ("export-0503.json#8", "relabel", "qa", "labelstudio", "qa-erik"),
    ]
    valid = validated(records)
    _, changes, corrected = run(*valid)
    assert boxes_of(corrected, IMG_A, 200, 100) == [("dent", *A_DENT), ("pit", 10.0, 10.0, 40.0, 30.0)]
    assert boxes_of(corrected, IMG_C, 320, 240) == [("scratch", 0.0, 0.0, 320.0, 240.0)]
    assert boxes_of(corrected, IMG_B, 640, 480) == [("pit", *B_PIT)]  # untouched
    first = changes.row(0, named=True)
    assert (
        first["action"] == "relabel" and len(json.loads(first["before"])) == 2 and len(json.loads(first["after"])) == 2
    )


def test_coco_relabel_in_another_frame_is_rescaled_or_rejected():
    # QA annotated the processed image, half the original size: boxes scale back to the original
    half = coco(
        [{"id": 1, "file_name": f"{IMG_A}.jpg", "width": 100, "height": 50}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 20]}],
    )
    _, _, corrected = run(*validated(parsed("half.json", half)))
    assert boxes_of(corrected, IMG_A, 200, 100) == [("scratch", 20.0, 10.0, 60.0, 50.0)]
    squashed = coco(
        [{"id": 1, "file_name": f"{IMG_A}.jpg", "width": 100, "height": 100}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 20]}],
    )
    _, rejects = cx.validate(parsed("sq.json", squashed), IMAGES, CLASSES, now=NOW)
    assert rejects == [
        {
            "file": "sq.json",
            "line": None,
            "record_id": "sq.json#1",
            "reason": "annotated image size 100x100 does not match the original 200x100 (aspect ratio differs)",
        }
    ]


def test_coco_empty_relabel_clears_the_image():
    data = coco([{"id": 1, "file_name": f"{IMG_A}.jpg"}], [])
    overlay, changes, corrected = run(*validated(parsed("clear.json", data)))
    assert overlay.filter(pl.col("image_id") == IMG_A).height == 0
    assert changes["result"].to_list() == ["applied"]
    assert boxes_of(corrected, IMG_A, 200, 100) == []
    assert corrected.height == 1  # only IMG_B's pit remains


def test_coco_broken_entries_rejected_with_reasons():
    data = coco(
        [
            {"id": 1, "file_name": f"{IMG_A}.jpg"},
            {"id": 2, "file_name": "frame_0001.jpg"},
            {"id": 3, "file_name": f"{IMG_B}.jpg"},
            {"id": 4, "file_name": f"{IMG_C}.jpg"},
        ],
        [
            {"id": 10, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},
            {"id": 11, "image_id": 3, "category_id": 1, "segmentation": [[1, 1, 2, 2, 3, 1]]},
            {"id": 12, "image_id": 42, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 13, "image_id": 4, "category_id": 4 - 2, "bbox": [300, 200, 40, 60]},
        ],
    )
    records, rejects = cx.parse_incoming("bad.json", data, names={"frame_0001.jpg": IMG_C})
    assert [r["record_id"] for r in rejects] == ["annotation 12", "bad.json#1", "bad.json#3"]
    assert "COCO image id 42, which is not in 'images'" in rejects[0]["reason"]
    assert "category_id 99 is not in 'categories'" in rejects[1]["reason"]
    assert "'bbox' must be [x, y, width, height]" in rejects[2]["reason"]
    assert [(r.correction_id, r.image_id) for r in records] == [("bad.json#2", IMG_C), ("bad.json#4", IMG_C)]
    _, rejects = cx.validate(records, IMAGES, CLASSES, now=NOW)
    assert rejects == [
        {
            "file": "bad.json",
            "line": None,
            "record_id": "bad.json#4",
            "reason": "box 0 (300, 200, 340, 260) is outside the image (320x240 pixels)",
        }
    ]
    assert (
        cx.parse_incoming("x.json", b'{"images": 3}')[1][0]["reason"]
        == "not a COCO file: expected an object with an 'images' list"
    )
    assert cx.parse_incoming("y.json", b'{"images": [')[1][0]["reason"].startswith("malformed JSON")


# -- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"image_sha256": UNKNOWN}, f"unknown image: {UNKNOWN!r} is not in the lake"),
        (
            {"box": {"x1": 150, "y1": 10, "x2": 201, "y2": 40}},
            "box (150, 10, 201, 40) is outside the image (200x100 pixels)",
        ),
        (
            {"box": {"x1": -3, "y1": 10, "x2": 20, "y2": 40}},
            "box (-3, 10, 20, 40) is outside the image (200x100 pixels)",
        ),
        (
            {"box": {"x1": 50, "y1": 10, "x2": 50, "y2": 40}},
            "box (50, 10, 50, 40) has no area: needs x2 > x1 and y2 > y1",
        ),
        ({"class_name": "bubble"}, "unknown class 'bubble'; classes are ['scratch', 'dent', 'pit']"),
        ({"class_name": ""}, "class_name is missing"),
        ({"author": "  "}, "author is missing"),
        ({"author": None}, "author is missing"),
        ({"created_at": "yesterday"}, "timestamp 'yesterday' is not an ISO 8601 time"),
        ({"created_at": "2026-06-01T12:10:00Z"}, "timestamp 2026-06-01T12:10:00Z is in the future"),
        ({"created_at": None}, "timestamp is missing"),
        (
            {"kind": "corrected_box", "original_box": {"x1": 0, "y1": 0, "x2": 500, "y2": 5}},
            "original_box (0, 0, 500, 5) is outside the image (200x100 pixels)",
        ),
    ],
)
def test_validate_rejects_with_reason(overrides, reason):
    records = parsed("edge-d-1-2.jsonl", jsonl(edge("ok-1"), edge("bad-1", **overrides)))
    valid, rejects = cx.validate(records, IMAGES, CLASSES, now=NOW)
    assert [v.correction_id for v in valid] == ["ok-1"]
    assert rejects == [{"file": "edge-d-1-2.jsonl", "line": 2, "record_id": "bad-1", "reason": reason}]


def test_validate_fills_image_facts_and_clamps_rounding():
    records = parsed(
        "e.jsonl", jsonl(edge("f-1", box=(150, 10, 200.3, 100.2)), edge("f-2", created_at="2026-06-01T12:03:00Z"))
    )
    valid = validated(records)  # 12:03 is within the 5-minute clock skew allowed for device clocks
    assert valid[0].box == (150.0, 10.0, 200.0, 100.0)
    assert (valid[0].image_width, valid[0].image_height, valid[0].batch) == (200, 100, "b0")
    assert valid[0].timestamp == "2026-05-01T08:00:00.000000Z"


def test_duplicate_ids_identical_kept_once_different_rejected():
    first = jsonl(edge("f-1"), edge("f-2", "false_positive", A_SCRATCH))
    resent = first  # a sync retry rewrites the same records
    changed = jsonl(edge("f-2", "false_positive", A_DENT, class_name="dent"))
    records = (
        parsed("edge-d-1-2.jsonl", first) + parsed("edge-d-1-2.jsonl", resent) + parsed("edge-d-3-3.jsonl", changed)
    )
    valid, rejects = cx.validate(records, IMAGES, CLASSES, now=NOW)
    assert [v.correction_id for v in valid] == ["f-1", "f-2"]
    assert valid[1].box == A_SCRATCH  # the first one stays
    assert rejects == [
        {
            "file": "edge-d-3-3.jsonl",
            "line": 1,
            "record_id": "f-2",
            "reason": "duplicate correction id 'f-2' with different content (first seen in edge-d-1-2.jsonl line 2)",
        }
    ]


def test_validate_needs_image_columns():
    with pytest.raises(ValueError, match="images table: missing column"):
        cx.validate([], IMAGES.drop("orig_height"), CLASSES)


# -- apply semantics -----------------------------------------------------------------------------------------


def test_add_remove_and_replace():
    records = validated(
        parsed(
            "e.jsonl",
            jsonl(
                edge("add", box=(0, 60, 30, 100), class_name="pit"),
                edge("fp", "false_positive", (22, 12, 62, 52)),  # IoU with the scratch ≈ 0.82
                edge(
                    "fix",
                    "corrected_box",
                    (98, 18, 170, 90),
                    class_name="dent",
                    original_box={"x1": 104, "y1": 24, "x2": 156, "y2": 76},
                ),
                edge("fix-b", "corrected_box", (290, 190, 350, 270), image_sha256=IMG_B, class_name="scratch"),
            ),
        )
    )
    overlay, changes, corrected = run(*records)
    assert boxes_of(corrected, IMG_A, 200, 100) == [("dent", 98.0, 18.0, 170.0, 90.0), ("pit", 0.0, 60.0, 30.0, 100.0)]
    assert boxes_of(corrected, IMG_B, 640, 480) == [("scratch", 290.0, 190.0, 350.0, 270.0)]  # class changed too
    assert set(overlay["source"]) == {"correction"}
    # one label set per image for gold: the last correction applied (same time: highest id) names it
    assert overlay.group_by("image_id").agg(pl.col("source_file").unique().len().alias("n"))["n"].to_list() == [1, 1]
    assert dict(overlay.select("image_id", "source_file").unique().iter_rows()) == {IMG_A: "fp", IMG_B: "fix-b"}
    assert set(overlay["batch"]) == {"b1"}
    rows = {r["correction_id"]: r for r in changes.iter_rows(named=True)}
    assert json.loads(rows["fp"]["before"])["class_name"] == "scratch" and rows["fp"]["after"] == "null"
    assert json.loads(rows["fix"]["before"]) == {
        "class_name": "dent",
        "x_center": 0.65,
        "y_center": 0.5,
        "width": 0.3,
        "height": 0.6,
    }
    assert json.loads(rows["fix"]["after"]) == {
        "class_name": "dent",
        "x_center": 0.67,
        "y_center": 0.54,
        "width": 0.36,
        "height": 0.72,
    }
    assert {(r["origin"], r["level"], r["author"]) for r in rows.values()} == {("jetson-07", "operator", "op-anna")}


def test_remove_needs_same_class_and_iou_half():
    records = validated(
        parsed(
            "e.jsonl",
            jsonl(
                edge("wrong-class", "false_positive", A_SCRATCH, class_name="dent"),
                edge("far", "false_positive", (40, 30, 80, 70)),  # IoU with the scratch = 400/2800
            ),
        )
    )
    overlay, changes, corrected = run(*records)
    assert changes["result"].to_list() == ["no_match", "no_match"]
    assert changes["before"].to_list() == ["null", "null"]
    assert overlay.height == 0
    assert parquet_bytes(corrected) == parquet_bytes(cx.corrected_labels(BASE, overlay, changes))
    assert corrected.sort(corrected.columns).equals(BASE.sort(BASE.columns))


def test_replace_without_match_adds():
    record = validated(parsed("e.jsonl", jsonl(edge("fix", "corrected_box", (0, 0, 15, 15), image_sha256=IMG_C))))
    overlay, changes, _ = run(*record)
    assert changes.row(0, named=True)["before"] == "null"
    assert boxes_of(overlay, IMG_C, 320, 240) == [("scratch", 0.0, 0.0, 15.0, 15.0)]
    assert overlay["batch"].to_list() == ["b2"]  # unlabelled image: batch from the images table


def test_apply_refuses_corrected_labels_and_unvalidated_records():
    overlay, changes, corrected = run(*validated(parsed("e.jsonl", jsonl(edge("f-1")))))
    with pytest.raises(ValueError, match="already contain corrected rows"):
        cx.apply(corrected, [], CLASSES)
    with pytest.raises(ValueError, match="pass records through validate"):
        cx.apply(BASE, parsed("e.jsonl", jsonl(edge("f-1"))), CLASSES)


# -- conflicts -----------------------------------------------------------------------------------------------


def test_qa_beats_operator_regardless_of_time():
    qa = (
        "correction_id,image_id,action,class_name,x1,y1,x2,y2,author,timestamp,tool\n"
        f"qa-1,{IMG_A},replace,scratch,18,8,58,48,qa-carla,2026-04-01T00:00:00Z,CVAT\n"
    )
    operator_later = edge("op-1", "corrected_box", (30, 20, 70, 60), created_at="2026-05-20T00:00:00Z")
    records = validated(parsed("qa.csv", qa.encode()) + parsed("e.jsonl", jsonl(operator_later)))
    _, changes, corrected = run(*records)
    assert changes["correction_id"].to_list() == ["op-1", "qa-1"]  # operator first, QA last
    assert boxes_of(corrected, IMG_A, 200, 100) == [("dent", *A_DENT), ("scratch", 18.0, 8.0, 58.0, 48.0)]
    # a QA relabel older than an operator's added box still decides the image's whole label set
    relabel = coco(
        [{"id": 1, "file_name": f"{IMG_A}.jpg"}],
        [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [100, 20, 60, 60]}],
        date_created="2026-01-01T00:00:00Z",
    )
    records = validated(
        parsed("e.jsonl", jsonl(edge("op-2", created_at="2026-05-30T00:00:00Z"))) + parsed("r.json", relabel)
    )
    _, _, corrected = run(*records)
    assert boxes_of(corrected, IMG_A, 200, 100) == [("dent", *A_DENT)]


def test_newer_beats_older_within_a_level():
    older = edge("op-old", "corrected_box", (10, 10, 50, 50), created_at="2026-05-01T09:00:00Z", author="op-anna")
    newer = edge("op-new", "corrected_box", (24, 14, 64, 54), created_at="2026-05-01T10:00:00+00:00", author="op-ben")
    for order in ((newer, older), (older, newer)):
        records = validated(parsed("e.jsonl", jsonl(*order)))
        _, changes, corrected = run(*records)
        assert changes["correction_id"].to_list() == ["op-old", "op-new"]
        assert boxes_of(corrected, IMG_A, 200, 100) == [("dent", *A_DENT), ("scratch", 24.0, 14.0, 64.0, 54.0)]


# -- idempotency and gold ----------------------------------------------------------------------------------------


def _mixed_records() -> list[cx.Correction]:
    edge_data = jsonl(
        edge("f-1", box=(0, 60, 30, 100), class_name="pit"),
        edge("f-2", "false_positive", A_SCRATCH),
        edge("f-3", "corrected_box", (300, 190, 350, 270), image_sha256=IMG_B, class_name="pit"),
    )
    qa = (
        "correction_id,image_id,action,class_name,x1,y1,x2,y2,author,timestamp,tool\n"
        f"qa-1,{IMG_C},add,dent,10,10,100,100,qa-carla,2026-05-02T10:00:00Z,CVAT\n"
    )
    return parsed("edge-j-1-3.jsonl", edge_data) + parsed("qa.csv", qa.encode())


def test_applying_twice_or_repeated_ids_changes_nothing():
    records = _mixed_records()
    valid = validated(records)
    overlay, changes = cx.apply(BASE, valid, CLASSES)
    again, changes_again = cx.apply(BASE, valid, CLASSES)
    assert parquet_bytes(again) == parquet_bytes(overlay)
    assert parquet_bytes(changes_again) == parquet_bytes(changes)
    # a sync retry and a re-export: the same files read again, in another order
    superset, rejects = cx.validate(records[::-1] + records, IMAGES, CLASSES, now=NOW)
    assert rejects == [] and len(superset) == 4
    assert parquet_bytes(cx.apply(BASE, superset + valid, CLASSES)[0]) == parquet_bytes(overlay)
    # through the validated table and back
    table = cx.corrections_frame(valid)
    assert cx.corrections_from_frame(table) == valid
    assert parquet_bytes(cx.apply(BASE, table, CLASSES)[0]) == parquet_bytes(overlay)
    assert overlay.height == 4 and changes.height == 4  # A: dent + pit, B: pit, C: dent


def test_corrected_labels_change_the_gold_hash_only_with_content():
    from alumi_pipelines.lib.vision.gold import plan_dataset

    features = IMAGES.unique("image_id", keep="first", maintain_order=True).with_columns(
        labelled=pl.lit(True), width=pl.col("orig_width"), height=pl.col("orig_height")
    )
    names = list(CLASSES.names)
    base_plan = plan_dataset(features, BASE, names)
    noop = validated(parsed("e.jsonl", jsonl(edge("fp-miss", "false_positive", (150, 60, 190, 95)))))

    def gold_hash(records) -> str:
        return plan_dataset(features, cx.corrected_labels(BASE, *cx.apply(BASE, records, CLASSES)), names).dataset_hash

    assert gold_hash(noop) == base_plan.dataset_hash
    valid = validated(_mixed_records())
    corrected = cx.corrected_labels(BASE, *cx.apply(BASE, valid, CLASSES))
    plan = plan_dataset(features, corrected, names)
    assert plan.dataset_hash != base_plan.dataset_hash
    assert gold_hash(valid + valid) == plan.dataset_hash
    assert plan.label_text[IMG_A] == "1 0.650000 0.500000 0.300000 0.600000\n2 0.075000 0.800000 0.150000 0.400000\n"
    assert plan.label_text[IMG_C] == "1 0.171875 0.229167 0.281250 0.375000\n"
