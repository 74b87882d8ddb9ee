"""Edge landing batches: frames a device kept arrive unlabelled (``"labelled": false``), with the model's own
predictions and other device fields in their sidecars, which are accepted and never taken as labels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.lib.vision import formats
from alumi_pipelines.lib.vision.ingest import ingest_batch, read_marker
from alumi_pipelines.lib.vision.labels import ClassMap

CLASSES = ClassMap.of(["scratch", "dent", "pit"])
MARKER = {"format": "alumi", "classes": None, "source": "alumi-edge", "device": "jetson-07"}


def image_bytes(width: int, height: int, level: int = 90) -> bytes:
    pixels = np.full((height, width, 3), level, np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = 200
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def edge_sidecar(image: str, width: int = 200, height: int = 100, **overrides) -> dict:
    """A sidecar as alumi-edge writes it for a kept frame: no labels, the model's boxes in pixels."""
    doc = {
        "image": image,
        "line_id": "L1",
        "camera_id": "cam-a",
        "captured_at": "2026-11-20T08:30:00.250Z",
        "width": width,
        "height": height,
        "boxes": [],
        "labelled": False,
        "predictions": [
            {"class_id": 0, "class_name": "scratch", "confidence": 0.41, "x1": 20, "y1": 10, "x2": 80, "y2": 30}
        ],
        "model_version": "7",
        "device": "jetson-07",
        "capture_reasons": ["low_confidence"],
        "detection_id": "req-0001",
        "image_sha256": "0" * 64,  # alumi-edge's own hash of the frame; the pipeline hashes the bytes itself
    }
    doc.update(overrides)
    return doc


def parse(files: dict[str, bytes | dict]) -> formats.ParseResult:
    data = {k: json.dumps(v).encode() if isinstance(v, dict) else v for k, v in files.items()}
    return formats.parse_batch("alumi", sorted(data), data.__getitem__)


def by_path(result: formats.ParseResult) -> dict:
    return {image.image_path: image for image in result.images}


def test_an_edge_frame_is_unlabelled_with_its_capture_metadata_and_no_rejection():
    result = parse({"L1/cam-a/f1.png": image_bytes(200, 100), "L1/cam-a/f1.json": edge_sidecar("f1.png")})
    assert result.rejections == []
    (frame,) = result.images
    assert (frame.image_path, frame.annotation_path, frame.labelled, frame.boxes) == (
        "L1/cam-a/f1.png",
        "L1/cam-a/f1.json",
        False,
        [],
    )
    assert frame.extra == {"line_id": "L1", "camera_id": "cam-a", "captured_at": "2026-11-20T08:30:00.250000Z"}
    assert (frame.declared_width, frame.declared_height) == (200, 100)
    assert result.notes == ["1 images, 0 labelled, 0 rejections"]


def test_boxes_of_an_unlabelled_sidecar_are_ignored_with_a_note_and_need_not_be_valid():
    box = {"class_name": "dent", "x_center": 0.5, "y_center": 0.5, "width": 0.2, "height": 0.2}
    result = parse(
        {
            "L1/cam-a/a.png": image_bytes(200, 100),
            "L1/cam-a/a.json": edge_sidecar("a.png", boxes=[box, {"class_name": "pit"}]),  # the 2nd is no box
            "L1/cam-a/b.png": image_bytes(200, 100),
            "L1/cam-a/b.json": {k: v for k, v in edge_sidecar("b.png").items() if k != "boxes"},  # no boxes field
        }
    )
    assert result.rejections == []
    images = by_path(result)
    assert [(p, im.labelled, im.boxes) for p, im in images.items()] == [
        ("L1/cam-a/a.png", False, []),
        ("L1/cam-a/b.png", False, []),
    ]
    assert "L1/cam-a/a.json: labelled is false; its 2 boxes ignored, L1/cam-a/a.png kept unlabelled" in result.notes


def test_labelled_true_or_absent_keeps_the_sidecar_a_label_set_and_unknown_fields_are_accepted():
    box = {"class_name": "dent", "x_center": 0.5, "y_center": 0.5, "width": 0.2, "height": 0.4}
    result = parse(
        {
            "L1/cam-a/a.png": image_bytes(200, 100),
            "L1/cam-a/a.json": edge_sidecar("a.png", labelled=True, boxes=[box]),
            "L1/cam-a/b.png": image_bytes(200, 100),
            "L1/cam-a/b.json": {k: v for k, v in edge_sidecar("b.png").items() if k != "labelled"},
        }
    )
    assert result.rejections == []
    a, b = by_path(result)["L1/cam-a/a.png"], by_path(result)["L1/cam-a/b.png"]
    assert a.labelled and [(x.class_name, x.x1, x.y1, x.x2, x.y2) for x in a.boxes] == [
        ("dent", pytest.approx(0.4), pytest.approx(0.3), pytest.approx(0.6), pytest.approx(0.7))
    ]
    assert b.labelled and b.boxes == []  # an empty label set: a defect-free claim, as before


@pytest.mark.parametrize("value", ["false", 0, None, [], {"value": False}])
def test_a_labelled_field_that_is_not_a_boolean_is_rejected(value):
    result = parse({"L1/cam-a/a.png": image_bytes(200, 100), "L1/cam-a/a.json": edge_sidecar("a.png", labelled=value)})
    assert [(r.path, r.reason) for r in result.rejections] == [
        ("L1/cam-a/a.json", f"field 'labelled' must be true or false, got {value!r}")
    ]
    assert by_path(result)["L1/cam-a/a.png"].labelled is False


def test_the_other_sidecar_checks_still_apply_to_unlabelled_frames():
    result = parse(
        {
            "L1/cam-a/a.png": image_bytes(200, 100),
            "L1/cam-a/a.json": edge_sidecar("a.png", captured_at="soon"),
            "L1/cam-a/b.png": image_bytes(200, 100),
            "L1/cam-a/b.json": edge_sidecar("b.png", camera_id="cam-z"),
            "L1/cam-a/c.json": edge_sidecar("c.png"),
        }
    )
    assert sorted((r.path, r.reason) for r in result.rejections) == [
        ("L1/cam-a/a.json", "field 'captured_at' 'soon' is not an ISO-8601 timestamp"),
        ("L1/cam-a/b.json", "field 'camera_id' is 'cam-z' but the sidecar lies in folder 'cam-a'"),
        ("L1/cam-a/c.json", "names image 'c.png', which is not in its folder L1/cam-a"),
    ]


def test_an_edge_batch_ingests_frames_unlabelled_beside_labelled_and_defect_free_images():
    frame, negative, labelled, tiny = (
        image_bytes(200, 100, 80),
        image_bytes(200, 100, 100),
        image_bytes(200, 100, 120),
        image_bytes(16, 16),
    )
    box = {"class_name": "pit", "x_center": 0.5, "y_center": 0.5, "width": 0.1, "height": 0.2}
    files = {
        "L1/cam-a/frame.png": frame,
        "L1/cam-a/frame.json": edge_sidecar("frame.png"),
        "L1/cam-a/copy.png": frame,  # the same frame kept twice: one image id, both unlabelled
        "L1/cam-a/copy.json": edge_sidecar("copy.png", detection_id="req-0002"),
        "L1/cam-a/negative.png": negative,
        "L1/cam-a/negative.json": edge_sidecar("negative.png", labelled=True),
        "L1/cam-a/labelled.png": labelled,
        "L1/cam-a/labelled.json": edge_sidecar("labelled.png", labelled=True, boxes=[box]),
        "L1/cam-a/tiny.png": tiny,
        "L1/cam-a/tiny.json": edge_sidecar("tiny.png", width=16, height=16),
        "_batch.json": MARKER,
    }
    data = {k: json.dumps(v).encode() if isinstance(v, dict) else v for k, v in files.items()}
    marker = read_marker("landing/edge-jetson-07/_batch.json", data["_batch.json"])
    stored: dict[str, bytes] = {}
    result = ingest_batch(
        "edge-jetson-07-20261120T0830Z-0a1b2c3d",
        marker,
        sorted(data),
        data.__getitem__,
        CLASSES,
        min_side=32,
        store=lambda image_id, ext, payload: stored.setdefault(image_id + ext, payload),
    )
    manifest = {m["source_path"]: m for m in result.manifest}
    assert {p: (m["image_id"], m["labelled"]) for p, m in manifest.items()} == {
        "L1/cam-a/copy.png": (sha256_hex(frame), False),
        "L1/cam-a/frame.png": (sha256_hex(frame), False),
        "L1/cam-a/labelled.png": (sha256_hex(labelled), True),
        "L1/cam-a/negative.png": (sha256_hex(negative), True),
    }
    assert manifest["L1/cam-a/frame.png"]["annotation_path"] == "L1/cam-a/frame.json"
    assert (manifest["L1/cam-a/frame.png"]["line_id"], manifest["L1/cam-a/frame.png"]["camera_id"]) == ("L1", "cam-a")
    assert [(r["image_id"], r["class_name"], r["x_center"], r["height"]) for r in result.labels] == [
        (sha256_hex(labelled), "pit", pytest.approx(0.5), pytest.approx(0.2))
    ]  # no label row for the frames, none for the defect-free image either
    assert [(r["path"], r["stage"], r["reason"]) for r in result.rejections] == [
        ("L1/cam-a/tiny.png", "image", "image 16x16 is smaller than the minimum side 32")
    ]
    assert sorted(stored) == sorted(f"{sha256_hex(b)}.png" for b in (frame, negative, labelled))
