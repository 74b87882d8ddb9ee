"""Label Studio documents of the review loop: config, tasks with pre-annotations, reviewed tasks as corrections."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from test_corrections import A_DENT, B_PIT, BASE, CLASSES, IMAGES, IMG_A, IMG_B, NOW, boxes_of, run, validated

from alumi_pipelines.lib.vision import corrections as cx
from alumi_pipelines.lib.vision import labelstudio as ls


def region(label, x, y, w, h, *, frame=(100, 50), rid="r1", **value):
    return {
        "id": rid,
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": frame[0],
        "original_height": frame[1],
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label], **value},
    }


def task(image_id, *annotations, task_id=11, project=3):
    return {
        "id": task_id,
        "project": project,
        "data": {"image_id": image_id, "width": 100, "height": 50},
        "annotations": list(annotations),
    }


def annotation(result, *, aid=5, updated="2026-05-02T09:30:00.123456Z", by="qa-dana@plant.example", cancelled=False):
    return {"id": aid, "completed_by": by, "updated_at": updated, "was_cancelled": cancelled, "result": result}


def parse(*tasks):
    return cx.parse_incoming("label-studio-p3-20260502.json", json.dumps(list(tasks)).encode())


def test_config_has_one_label_per_class_in_id_order_and_the_verdict():
    root = ET.fromstring(ls.review_config(["scratch", "dent", 'pit "deep"']))
    labels = root.find("RectangleLabels")
    assert (labels.get("name"), labels.get("toName")) == ("label", "image")
    assert [label.get("value") for label in labels] == ["scratch", "dent", 'pit "deep"']
    assert [c.get("value") for c in root.find("Choices")] == ["no defect"]
    assert [h.get("value") for h in root.findall("Header")] == ["$reason", "$detail"]
    assert ls.project_title(["scratch", "dent"]) == ls.project_title(["scratch", "dent"])
    assert ls.project_title(["scratch", "dent"]) != ls.project_title(["dent", "scratch"])  # ids differ: own project
    with pytest.raises(ls.ReviewDocumentError, match="class map is empty"):
        ls.project_title([])


def test_task_carries_the_reason_and_the_champions_boxes_in_percent():
    doc = ls.review_task(
        image_id=IMG_A,
        image_url="/data/local-files/?d=lake/processed/images/ab/x.jpg",
        reason="missed_boxes",
        detail="1 missed (dent)",
        width=200,
        height=100,
        boxes=[("dent", 0.91234, 0.5, 0.5, 0.2, 0.4)],
        model_version="7",
    )
    assert doc["data"] == {
        "image": "/data/local-files/?d=lake/processed/images/ab/x.jpg",
        "image_id": IMG_A,
        "reason": "missed_boxes",
        "detail": "1 missed (dent)",
        "width": 200,
        "height": 100,
    }
    (prediction,) = doc["predictions"]
    assert (prediction["model_version"], prediction["score"]) == ("7", 0.9123)
    (r,) = prediction["result"]
    assert r["value"] == {
        "x": 40.0,
        "y": 30.0,
        "width": 20.0,
        "height": 40.0,
        "rotation": 0,
        "rectanglelabels": ["dent"],
    }
    assert (r["original_width"], r["original_height"], r["score"]) == (200, 100, 0.9123)
    without_model = ls.review_task(
        image_id=IMG_A, image_url="u", reason="flagged", detail="", width=2, height=2, boxes=[], model_version=None
    )
    assert "predictions" not in without_model


def test_reviewed_task_is_a_qa_relabel_in_the_original_pixels():
    # the reviewer saw the processed image (100 x 50), the original is 200 x 100: boxes scale back
    doc = task(IMG_A, annotation([region("pit", 10, 20, 20, 40), region("Scratches", 50, 0, 10, 10, rid="r2")]))
    records, rejects = parse(doc)
    assert rejects == []
    (record,) = records
    assert (record.correction_id, record.action, record.level, record.origin, record.author, record.timestamp) == (
        "label-studio:3:11:5@2026-05-02T09:30:00.123456Z",
        "relabel",
        "qa",
        "label-studio",
        "qa-dana@plant.example",
        "2026-05-02T09:30:00.123456Z",
    )
    assert record.frame == (100, 50)
    _, _, corrected = run(*validated(records))
    assert boxes_of(corrected, IMG_A, 200, 100) == [
        ("pit", 20.0, 20.0, 60.0, 60.0),
        ("scratch", 100.0, 0.0, 120.0, 10.0),
    ]
    assert boxes_of(corrected, IMG_B, 640, 480) == [("pit", *B_PIT)]  # untouched


def test_skipped_or_no_defect_removes_the_boxes_and_a_contradiction_is_rejected():
    skipped = task(IMG_A, annotation([], cancelled=True))
    no_defect = task(
        IMG_B,
        annotation([{"type": "choices", "from_name": "verdict", "value": {"choices": ["no defect"]}}], aid=6),
        task_id=12,
    )
    both = task(
        IMG_A,
        annotation(
            [region("dent", 1, 1, 5, 5), {"type": "choices", "value": {"choices": ["no defect"]}}],
            aid=7,
            updated="2026-05-02T10:00:00.000000Z",
        ),
        task_id=13,
    )
    records, rejects = parse(skipped, no_defect, both)
    assert [r.boxes for r in records] == [(), ()]
    assert rejects == [
        {
            "file": "label-studio-p3-20260502.json",
            "line": None,
            "record_id": "label-studio:3:13:7@2026-05-02T10:00:00.000000Z",
            "reason": "Label Studio task 13: marked 'no defect' but has 1 box(es): remove the boxes or the mark",
        }
    ]
    _, _, corrected = run(*validated(records))
    assert corrected.height == 0 and BASE.height == 3


def test_an_annotation_edited_later_supersedes_and_the_same_pull_twice_is_one_correction():
    first = task(IMG_A, annotation([region("dent", 10, 10, 10, 10)]))
    later = task(IMG_A, annotation([region("pit", 0, 0, 10, 10)], updated="2026-05-02T11:00:00.000000Z"))
    records = parse(first)[0] + parse(first)[0] + parse(later)[0]
    valid = validated(records)
    assert len(valid) == 2  # the repeated pull is the same correction
    _, _, corrected = run(*valid)
    assert boxes_of(corrected, IMG_A, 200, 100) == [("pit", 0.0, 0.0, 20.0, 10.0)]
    assert A_DENT not in [b[1:] for b in boxes_of(corrected, IMG_A, 200, 100)]


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ([region("dent", 1, 1, 5, 5, rotation=30)], "rotated boxes are not supported (rotation 30)"),
        ([{**region("dent", 1, 1, 5, 5), "original_width": None}], None),  # falls back to the task's size
        ([region("dent", "a", 1, 5, 5)], "'value' needs numeric x, y, width, height (percent)"),
        ([{**region("dent", 1, 1, 5, 5), "value": {"x": 1, "rectanglelabels": []}}], "needs exactly one"),
        ("nope", "field 'result' must be a list of regions"),
    ],
)
def test_broken_annotations_are_rejected_naming_the_rule(result, reason):
    records, rejects = parse(task(IMG_A, annotation(result)))
    if reason is None:
        assert rejects == [] and records[0].frame == (100, 50)
    else:
        assert records == [] and len(rejects) == 1 and reason in rejects[0]["reason"]
        assert rejects[0]["reason"].startswith("Label Studio task 11: ")


def test_a_task_without_a_known_image_or_data_is_rejected_by_validation_or_parsing():
    records, rejects = parse({"id": 1, "annotations": []}, task("not-a-sha", annotation([])))
    assert rejects[0]["reason"] == "Label Studio task is not an object with 'data'"
    _, invalid = cx.validate(records, IMAGES, CLASSES, now=NOW)
    assert "does not resolve to an image id" in invalid[0]["reason"]
