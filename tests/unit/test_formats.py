"""Label-format importers: exact boxes from good datasets, precise rejections from bad ones."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from alumi_pipelines.lib.vision import formats
from alumi_pipelines.lib.vision.formats import AnnotatedImage, SourceBox
from alumi_pipelines.lib.vision.imaging import probe
from alumi_pipelines.lib.vision.labels import ClassMap

CLASSES = ClassMap.of(["scratch", "dent", "pit"])


# -- helpers -----------------------------------------------------------------------------------------


def image_bytes(width: int, height: int, channels: int = 3, ext: str = ".jpg") -> bytes:
    """A small encoded image with some structure (so JPEG encoding is not trivial)."""
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = np.full(shape, 90, np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = 200
    ok, encoded = cv2.imencode(ext, pixels)
    assert ok
    return encoded.tobytes()


def write(root: Path, files: dict[str, bytes | str | dict | list]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (dict, list)):
            content = json.dumps(content)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def parse(root: Path, fmt: str, class_names=None) -> formats.ParseResult:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return formats.parse_batch(fmt, files, lambda rel: (root / rel).read_bytes(), class_names)


def by_path(result: formats.ParseResult) -> dict[str, AnnotatedImage]:
    return {image.image_path: image for image in result.images}


def reasons(rejections) -> set[tuple[str, str]]:
    return {(r.path, r.reason) for r in rejections}


def canonical(root: Path, result: formats.ParseResult, class_map: ClassMap = CLASSES, fmt: str = "test"):
    """Rows per image (sizes probed from the real files), plus all rejections and notes."""
    class_map = formats.source_class_map(class_map, result.class_names)
    rows, rejections, notes = {}, [], []
    for image in result.images:
        info = probe((root / image.image_path).read_bytes())
        r, rej, n = formats.to_canonical_rows(
            image,
            info.width,
            info.height,
            info.channels,
            class_map,
            image_id=f"id-{image.image_path}",
            source=fmt,
            batch="b1",
        )
        rows[image.image_path] = r
        rejections += rej
        notes += n
    return rows, rejections, notes


def box_values(rows: list[dict]) -> list[tuple]:
    return [(r["class_name"], r["class_id"], r["x_center"], r["y_center"], r["width"], r["height"]) for r in rows]


def assert_boxes(actual: list[tuple], expected: list[tuple]) -> None:
    assert len(actual) == len(expected), actual
    for got, want in zip(actual, expected):
        assert got[:2] == want[:2], (got, want)
        assert got[2:] == pytest.approx(want[2:], abs=1e-9), (got, want)


def corners(boxes: list[SourceBox]) -> list[tuple]:
    return [(b.class_name, b.x1, b.y1, b.x2, b.y2, b.normalised) for b in boxes]


def assert_corners(boxes: list[SourceBox], expected: list[tuple]) -> None:
    actual = corners(boxes)
    assert len(actual) == len(expected), actual
    for got, want in zip(actual, expected):
        assert (got[0], got[5]) == (want[0], want[5]), (got, want)
        assert got[1:5] == pytest.approx(want[1:5], abs=1e-9), (got, want)


# -- YOLO --------------------------------------------------------------------------------------------


def test_yolo_good_dataset_parses_to_exact_boxes(tmp_path):
    write(
        tmp_path,
        {
            "_batch.json": {"batch_id": "b1", "format": "yolo"},
            "classes.txt": "scratch\ndent\npit",  # no trailing newline
            "images/train/a.jpg": image_bytes(200, 100),
            "images/val/b.png": image_bytes(100, 100, 1, ".png"),
            "images/train/c.jpg": image_bytes(64, 64),
            # CRLF, blank lines, tabs and padding, no trailing newline
            "labels/train/a.txt": "\r\n0 0.5 0.5 0.2 0.4\r\n\r\n  1\t0.25   0.25 0.1 0.1  \r\n2 0.9 0.9 0.2 0.2",
            "labels/val/b.txt": "",  # labelled background
        },
    )
    result = parse(tmp_path, "yolo")
    assert result.rejections == []
    assert result.class_names == ["scratch", "dent", "pit"]
    images = by_path(result)
    assert sorted(images) == ["images/train/a.jpg", "images/train/c.jpg", "images/val/b.png"]
    a, b, c = images["images/train/a.jpg"], images["images/val/b.png"], images["images/train/c.jpg"]
    assert (a.labelled, a.annotation_path) == (True, "labels/train/a.txt")
    assert_corners(
        a.boxes, [("0", 0.4, 0.3, 0.6, 0.7, True), ("1", 0.2, 0.2, 0.3, 0.3, True), ("2", 0.8, 0.8, 1.0, 1.0, True)]
    )
    assert [box.origin for box in a.boxes] == ["label line 2 (scratch)", "label line 4 (dent)", "label line 5 (pit)"]
    assert (b.labelled, b.boxes, b.annotation_path) == (True, [], "labels/val/b.txt")
    assert (c.labelled, c.boxes, c.annotation_path) == (False, [], "")

    rows, rejections, notes = canonical(tmp_path, result, fmt="yolo")
    assert rejections == [] and notes == []
    assert_boxes(
        box_values(rows["images/train/a.jpg"]),
        [("scratch", 0, 0.5, 0.5, 0.2, 0.4), ("dent", 1, 0.25, 0.25, 0.1, 0.1), ("pit", 2, 0.9, 0.9, 0.2, 0.2)],
    )
    first = rows["images/train/a.jpg"][0]
    assert {k: first[k] for k in ("image_id", "source", "source_file", "batch")} == {
        "image_id": "id-images/train/a.jpg",
        "source": "yolo",
        "source_file": "labels/train/a.txt",
        "batch": "b1",
    }
    assert set(first) == {
        "image_id",
        "class_name",
        "class_id",
        "x_center",
        "y_center",
        "width",
        "height",
        "source",
        "source_file",
        "batch",
    }
    assert rows["images/val/b.png"] == [] and rows["images/train/c.jpg"] == []


def test_yolo_names_from_data_yaml_and_from_the_caller(tmp_path):
    write(
        tmp_path,
        {
            "data.yaml": "path: .\nnames:\n  0: pit\n  1: scratch\n",
            "a.jpg": image_bytes(100, 100),
            "a.txt": "1 0.5 0.5 0.5 0.5\n0 0.2 0.2 0.2 0.2\n",
        },
    )
    result = parse(tmp_path, "yolo")
    assert result.class_names == ["pit", "scratch"]
    rows, rejections, _ = canonical(tmp_path, result)
    assert rejections == []
    assert_boxes(box_values(rows["a.jpg"]), [("scratch", 0, 0.5, 0.5, 0.5, 0.5), ("pit", 2, 0.2, 0.2, 0.2, 0.2)])

    # A dataset class the class map does not know is named in the rejection.
    rows, rejections, _ = canonical(tmp_path, result, ClassMap.of(["scratch"]))
    assert [r["class_name"] for r in rows["a.jpg"]] == ["scratch"]
    assert reasons(rejections) == {("a.txt", "label line 2 (pit): class '0' is not in the class map ['scratch']")}

    # The batch's declared classes win over the files; the disagreement is noted.
    declared = parse(tmp_path, "yolo", class_names=["dent", "pit"])
    assert declared.class_names == ["dent", "pit"]
    assert "data.yaml: class names differ from the batch's declared classes; using the declared ones" in declared.notes
    rows, _, _ = canonical(tmp_path, declared)
    assert [r["class_name"] for r in rows["a.jpg"]] == ["pit", "dent"]


def test_yolo_without_names_keeps_ids_for_aliases(tmp_path):
    write(tmp_path, {"a.jpg": image_bytes(100, 100), "a.txt": "7 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.1 0.1\n"})
    result = parse(tmp_path, "yolo")
    assert result.class_names is None
    assert any("YOLO class ids are kept as numbers" in note for note in result.notes)
    assert [b.class_name for b in result.images[0].boxes] == ["7", "3"]
    rows, rejections, _ = canonical(tmp_path, result, ClassMap.of(["scratch", "dent"], {"7": "dent"}))
    assert [(r["class_name"], r["class_id"]) for r in rows["a.jpg"]] == [("dent", 1)]
    assert reasons(rejections) == {("a.txt", "label line 2: class '3' is not in the class map ['scratch', 'dent']")}


def test_yolo_bad_lines_are_rejected_with_line_numbers_and_good_lines_survive(tmp_path):
    lines = [
        "0 0.5 0.5 0.2 0.2",  # 1 good
        "0 0.5 0.5 0.2",  # 2 four fields
        "x 0.5 0.5 0.1 0.1",  # 3 class not a number
        "0 0.5 abc 0.1 0.1",  # 4 value not a number
        "9 0.5 0.5 0.1 0.1",  # 5 class id beyond classes.txt
        "0 0.5 0.5 0 0.1",  # 6 zero width
        "1 0.5 0.5 0.1 nan",  # 7 not finite
        "-1 0.5 0.5 0.1 0.1",  # 8 negative class id
        "1 0.5 0.5 0.1 0.1 0.9",  # 9 six fields (a prediction with confidence)
        "2 0.1 0.1 0.3 0.1 0.2 0.4",  # 10 polygon -> its bounding box
        "1 0.25 0.75 0.1 0.1",  # 11 good
    ]
    write(
        tmp_path,
        {
            "classes.txt": "scratch\ndent\npit\n",
            "images/a.jpg": image_bytes(100, 100),
            "images/b.jpg": image_bytes(100, 100),
            "images/c.jpg": image_bytes(100, 100),
            "labels/a.txt": "\n".join(lines),
            "labels/b.txt": b"0 0.5 0.5\x00\x00 0.1",  # binary: the whole file is unreadable
            "labels/c.txt": "0 0.5 0.5 0.1 0.1 \xe9".encode("latin-1"),  # not UTF-8
            "labels/orphan.txt": "0 0.5 0.5 0.1 0.1",
            "README.txt": "a dataset",
        },
    )
    result = parse(tmp_path, "yolo")
    expected_shape = "expected 5 (class x_center y_center width height) or a polygon (class x1 y1 x2 y2 x3 y3 ...)"
    assert reasons(result.rejections) == {
        ("labels/a.txt", f"label line 2: 4 fields; {expected_shape}"),
        ("labels/a.txt", "label line 3: class id 'x' is not a non-negative integer"),
        ("labels/a.txt", "label line 4: 'abc' is not a finite number"),
        ("labels/a.txt", "label line 5: class id 9 not in classes.txt (3 names)"),
        ("labels/a.txt", "label line 6: zero or negative box size (width 0, height 0.1)"),
        ("labels/a.txt", "label line 7: 'nan' is not a finite number"),
        ("labels/a.txt", "label line 8: class id '-1' is not a non-negative integer"),
        ("labels/a.txt", f"label line 9: 6 fields; {expected_shape}"),
        ("labels/b.txt", "not a text file (contains NUL bytes)"),
        ("labels/c.txt", "not UTF-8 text (invalid byte at offset 18)"),
        ("labels/orphan.txt", "label file has no image: no image named orphan.* in the batch"),
    }
    images = by_path(result)
    assert_corners(
        images["images/a.jpg"].boxes,
        [("0", 0.4, 0.4, 0.6, 0.6, True), ("2", 0.1, 0.1, 0.3, 0.4, True), ("1", 0.2, 0.7, 0.3, 0.8, True)],
    )
    # Unreadable label files leave their images unlabelled, not background.
    assert images["images/b.jpg"].labelled is False and images["images/c.jpg"].labelled is False
    assert any("README.txt" in note for note in result.notes)


def test_boxes_slightly_outside_are_clipped_and_far_outside_rejected(tmp_path):
    write(
        tmp_path,
        {
            "classes.txt": "scratch\n",
            "a.jpg": image_bytes(200, 100),
            "a.txt": "\n".join(
                [
                    "0 0.04 0.5 0.08000002 0.2",  # rounding overshoot (0.000002 px): silently clipped
                    "0 0.995 0.5 0.03 0.2",  # 1% of the width outside (2 px): clipped and noted
                    "0 0.5 0.95 0.2 0.3",  # 10% of the height outside: rejected
                    "0 1.015 0.5 0.01 0.2",  # entirely outside but within 2%: nothing left
                ]
            ),
        },
    )
    result = parse(tmp_path, "yolo")
    assert result.rejections == []
    rows, rejections, notes = canonical(tmp_path, result)
    assert_boxes(
        box_values(rows["a.jpg"]),
        [("scratch", 0, 0.08000001 / 2, 0.5, 0.08000001, 0.2), ("scratch", 0, 0.99, 0.5, 0.02, 0.2)],
    )
    assert notes == ["a.txt: label line 2 (scratch): box clipped to the image (it extended 2.0 px outside)"]
    assert reasons(rejections) == {
        ("a.txt", "label line 3 (scratch): box extends 10.0% of the image outside it (limit 2%)"),
        ("a.txt", "label line 4 (scratch): box lies outside the image (nothing left after clipping)"),
    }


def test_yolo_same_stem_in_several_folders_pairs_by_folder_structure_or_is_rejected(tmp_path):
    write(
        tmp_path,
        {
            "classes.txt": "scratch\ndent\n",
            "images/x/a.jpg": image_bytes(64, 64),
            "images/y/a.jpg": image_bytes(64, 64),
            "labels/x/a.txt": "0 0.5 0.5 0.2 0.2",
            "labels/y/a.txt": "1 0.3 0.3 0.2 0.2",
            "labels/a.txt": "1 0.6 0.6 0.2 0.2",  # which a.jpg? cannot tell
        },
    )
    result = parse(tmp_path, "yolo")
    images = by_path(result)
    assert (images["images/x/a.jpg"].annotation_path, images["images/y/a.jpg"].annotation_path) == (
        "labels/x/a.txt",
        "labels/y/a.txt",
    )
    assert_corners(images["images/x/a.jpg"].boxes, [("0", 0.4, 0.4, 0.6, 0.6, True)])
    assert_corners(images["images/y/a.jpg"].boxes, [("1", 0.2, 0.2, 0.4, 0.4, True)])
    assert reasons(result.rejections) == {
        (
            "labels/a.txt",
            "label file has no image: ambiguous: matches 2 images equally well (images/x/a.jpg, images/y/a.jpg)",
        )
    }


def test_two_annotations_for_one_image_are_both_rejected(tmp_path):
    write(
        tmp_path,
        {
            "images/a.jpg": image_bytes(64, 64),
            "labels/a.txt": "0 0.5 0.5 0.2 0.2",
            "labels/old/a.txt": "0 0.4 0.4 0.2 0.2",
        },
    )
    result = parse(tmp_path, "yolo")
    assert reasons(result.rejections) == {
        (
            "labels/a.txt",
            "duplicate annotation: labels/a.txt annotates images/a.jpg, which labels/old/a.txt also annotates",
        ),
        (
            "labels/old/a.txt",
            "duplicate annotation: labels/old/a.txt annotates images/a.jpg, which labels/a.txt also annotates",
        ),
    }
    assert result.images[0].labelled is False and result.images[0].boxes == []


def test_yolo_parsing_thousands_of_files_is_fast():
    """5000 images + labels, no image decoding: well under a second of work."""
    files, contents = [], {}
    for i in range(5000):
        files += [f"images/img{i}.jpg", f"labels/img{i}.txt"]
        contents[f"labels/img{i}.txt"] = f"{i % 3} 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.05 0.05".encode()
    contents["classes.txt"] = b"a\nb\nc\n"
    files.append("classes.txt")
    started = time.perf_counter()
    result = formats.parse_batch("yolo", files, contents.__getitem__)
    elapsed = time.perf_counter() - started
    assert len(result.images) == 5000 and result.rejections == []
    assert sum(len(im.boxes) for im in result.images) == 10000
    assert elapsed < 5.0, elapsed


# -- Pascal VOC --------------------------------------------------------------------------------------


def voc_xml(filename: str | None, objects: list[tuple], size=(200, 100, 3)) -> str:
    parts = ["<annotation><folder>JPEGImages</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename><path>/home/someone/data/{filename}</path>")
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>{size[2]}</depth></size>")
    for name, *box in objects:
        corner_tags = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>{corner_tags}</bndbox></object>")
    parts.append("</annotation>")
    return "\n".join(parts)


def test_voc_good_dataset_parses_to_exact_boxes(tmp_path):
    write(
        tmp_path,
        {
            "JPEGImages/a.jpg": image_bytes(200, 100),
            "JPEGImages/b.jpg": image_bytes(50, 50),
            "Annotations/a.xml": voc_xml("a.jpg", [("scratch", 20, 10, 60, 50), ("Dent", 100.5, 0, 200, 100)]),
            "Annotations/b.xml": voc_xml(None, [], size=(50, 50, 3)),  # no <filename>: paired by stem
        },
    )
    result = parse(tmp_path, "voc")
    assert result.rejections == []
    images = by_path(result)
    a = images["JPEGImages/a.jpg"]
    assert (a.annotation_path, a.declared_width, a.declared_height, a.declared_channels) == (
        "Annotations/a.xml",
        200,
        100,
        3,
    )
    assert_corners(a.boxes, [("scratch", 20, 10, 60, 50, False), ("Dent", 100.5, 0, 200, 100, False)])
    assert images["JPEGImages/b.jpg"].labelled and images["JPEGImages/b.jpg"].boxes == []
    rows, rejections, notes = canonical(tmp_path, result)
    assert rejections == [] and notes == []
    assert_boxes(
        box_values(rows["JPEGImages/a.jpg"]),
        [("scratch", 0, 0.2, 0.3, 0.2, 0.4), ("dent", 1, 0.75125, 0.5, 0.4975, 1.0)],
    )


def test_voc_malformed_files_and_objects_are_rejected_and_good_ones_survive(tmp_path):
    write(
        tmp_path,
        {
            "images/a.jpg": image_bytes(200, 100),
            "images/b.jpg": image_bytes(200, 100),
            "xml/a.xml": voc_xml(
                "a.jpg",
                [
                    ("scratch", 20, 10, 60, 50),  # good
                    ("dent", 10, 10, "ten", 50),  # non-numeric
                    ("dent", 60, 10, 20, 50),  # xmax < xmin
                    ("rust", 0, 0, 10, 10),  # class not in the map (found when resolving)
                ],
            ).replace("</annotation>", "<object><name>pit</name></object><object><bndbox/></object></annotation>"),
            "xml/broken.xml": "<annotation><filename>b.jpg</filename><object>",
            "xml/wrong_root.xml": "<doc><filename>b.jpg</filename></doc>",
            "xml/ghost.xml": voc_xml("ghost.jpg", [("pit", 1, 1, 5, 5)]),
            "xml/climb.xml": voc_xml("../../etc/passwd", [("pit", 1, 1, 5, 5)]),
            "xml/drive.xml": voc_xml("C:\\data\\b.jpg", [("pit", 1, 1, 5, 5)]),
            "xml/absolute.xml": voc_xml("/data/b.jpg", [("pit", 1, 1, 5, 5)]),
        },
    )
    result = parse(tmp_path, "voc")
    got = reasons(result.rejections)
    broken = [r for r in got if r[0] == "xml/broken.xml"]
    assert len(broken) == 1 and broken[0][1].startswith("not well-formed XML: no element found")
    assert got - set(broken) == {
        ("xml/a.xml", "object 2 (dent): <xmax> is 'ten', not a finite number"),
        ("xml/a.xml", "object 3 (dent): zero or negative box size (width -40, height 40)"),
        ("xml/a.xml", "object 5 (pit): missing <bndbox>"),
        ("xml/a.xml", "object 6: missing <name>"),
        ("xml/wrong_root.xml", "root element is <doc>, expected <annotation> (Pascal VOC)"),
        ("xml/ghost.xml", "names image 'ghost.jpg', which is not in the batch"),
        ("xml/climb.xml", "image name '../../etc/passwd' climbs out of its folder with '..'"),
        ("xml/drive.xml", "image name 'C:\\\\data\\\\b.jpg' is an absolute Windows path (drive letter)"),
        ("xml/absolute.xml", "image name '/data/b.jpg' is an absolute path"),
    }
    images = by_path(result)
    assert images["images/b.jpg"].labelled is False
    rows, rejections, _ = canonical(tmp_path, result)
    assert_boxes(box_values(rows["images/a.jpg"]), [("scratch", 0, 0.2, 0.3, 0.2, 0.4)])
    assert reasons(rejections) == {
        ("xml/a.xml", "object 4 (rust): class 'rust' is not in the class map ['scratch', 'dent', 'pit']")
    }


def test_declared_size_and_channels_that_disagree_are_noted_and_resolved_from_the_image(tmp_path):
    write(
        tmp_path,
        {
            "a.jpg": image_bytes(200, 100),
            "a.xml": voc_xml("a.jpg", [("pit", 20, 10, 60, 50)], size=(100, 200, 1)),
        },
    )
    result = parse(tmp_path, "voc")
    rows, rejections, notes = canonical(tmp_path, result)
    assert rejections == []
    assert notes == [
        "a.xml: declares 100x200 for a.jpg, the image is 200x100; boxes are normalised by the image's size "
        "(width and height swapped: EXIF rotation?)",
        "a.xml: declares 1 channels for a.jpg, the image has 3; using the image's",
    ]
    assert_boxes(box_values(rows["a.jpg"]), [("pit", 2, 0.2, 0.3, 0.2, 0.4)])


def test_voc_filename_with_other_extension_pairs_by_stem_with_a_note(tmp_path):
    write(tmp_path, {"img/a.jpg": image_bytes(64, 64), "ann/a.xml": voc_xml("a.png", [("pit", 1, 1, 9, 9)])})
    result = parse(tmp_path, "voc")
    assert result.rejections == []
    assert result.images[0].annotation_path == "ann/a.xml"
    assert "ann/a.xml: names image 'a.png', paired with img/a.jpg (same stem)" in result.notes


# -- COCO --------------------------------------------------------------------------------------------


def coco_doc(images: list[dict], annotations: list[dict], categories=None) -> dict:
    return {
        "info": {"description": "test"},
        "images": images,
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}],
    }


def test_coco_good_dataset_with_nested_folders_and_windows_separators(tmp_path):
    write(
        tmp_path,
        {
            "images/train/a.jpg": image_bytes(200, 100),
            "images/train/b.jpg": image_bytes(100, 100),
            "images/val/c.jpg": image_bytes(100, 50),
            "images/val/d.jpg": image_bytes(64, 64),
            "annotations/train.json": coco_doc(
                [
                    {"id": 1, "file_name": "train\\a.jpg", "width": 200, "height": 100},
                    {"id": 2, "file_name": "images/train/b.jpg", "width": 100, "height": 100},
                ],
                [
                    {"id": 10, "image_id": 1, "category_id": 1, "bbox": [20, 10, 40, 40], "area": 1600, "iscrowd": 0},
                    {"id": 11, "image_id": 1, "category_id": 2, "bbox": [100, 0, 100, 100], "iscrowd": 0},
                    # segmentation without bbox: bounds of the polygon
                    {"id": 12, "image_id": 1, "category_id": 2, "segmentation": [[10, 60, 30, 60, 20, 90]]},
                ],
            ),
            "annotations/val.json": coco_doc(
                [{"id": 1, "file_name": "c.jpg", "width": 100, "height": 50}],
                [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [25.5, 10, 50, 25]}],
            ),
        },
    )
    result = parse(tmp_path, "coco")
    assert result.rejections == []
    images = by_path(result)
    a = images["images/train/a.jpg"]
    assert (a.annotation_path, a.declared_width, a.declared_height) == ("annotations/train.json", 200, 100)
    assert_corners(
        a.boxes,
        [("scratch", 20, 10, 60, 50, False), ("dent", 100, 0, 200, 100, False), ("dent", 10, 60, 30, 90, False)],
    )
    assert [b.origin for b in a.boxes] == [
        "annotation id 10 (images/train/a.jpg)",
        "annotation id 11 (images/train/a.jpg)",
        "annotation id 12 (images/train/a.jpg)",
    ]
    assert images["images/train/b.jpg"].labelled and images["images/train/b.jpg"].boxes == []  # listed, no boxes
    assert images["images/val/c.jpg"].annotation_path == "annotations/val.json"
    assert images["images/val/d.jpg"].labelled is False  # in no json
    rows, rejections, notes = canonical(tmp_path, result)
    assert rejections == [] and notes == []
    assert_boxes(
        box_values(rows["images/train/a.jpg"]),
        [("scratch", 0, 0.2, 0.3, 0.2, 0.4), ("dent", 1, 0.75, 0.5, 0.5, 1.0), ("dent", 1, 0.1, 0.75, 0.1, 0.3)],
    )
    assert_boxes(box_values(rows["images/val/c.jpg"]), [("scratch", 0, 0.505, 0.45, 0.5, 0.5)])


def test_coco_malformed_records_are_rejected_and_good_ones_survive(tmp_path):
    write(
        tmp_path,
        {
            "images/train/a.jpg": image_bytes(200, 100),
            "images/train/x.jpg": image_bytes(64, 64),
            "images/val/x.jpg": image_bytes(64, 64),
            "images/b.jpg": image_bytes(64, 64),
            "coco.json": coco_doc(
                [
                    {"id": 1, "file_name": "train/a.jpg"},
                    {"id": 2, "file_name": "missing.jpg"},
                    {"id": 3, "file_name": "..\\..\\secret.jpg"},
                    {"id": 4, "file_name": "x.jpg"},  # train/x.jpg or val/x.jpg?
                    {"id": 5, "file_name": "b.jpg\x00.png"},
                    {"id": 6, "file_name": "b.jpg"},
                    {"id": 6, "file_name": "train/x.jpg"},  # id reused: its annotations cannot be attributed
                ],
                [
                    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 40, 40]},  # good
                    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 10, 40]},
                    {"id": 3, "image_id": 1, "category_id": 1, "bbox": [20, 10, -5, 40]},
                    {"id": 4, "image_id": 1, "category_id": 7, "bbox": [20, 10, 5, 5]},
                    {"id": 5, "image_id": 99, "category_id": 1, "bbox": [20, 10, 5, 5]},
                    {"id": 6, "image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1},
                    {"id": 7, "image_id": 1, "category_id": 2, "bbox": ["a", 0, 5, 5]},
                    {"id": 8, "image_id": 2, "category_id": 2, "bbox": [1, 1, 5, 5]},
                    {"id": 9, "image_id": 6, "category_id": 2, "bbox": [1, 1, 5, 5]},
                ],
            ),
            "broken.json": '{"images": [',
            "other.json": {"shapes": []},
        },
    )
    result = parse(tmp_path, "coco")
    assert reasons(result.rejections) == {
        (
            "coco.json",
            "images entries id 6 ('b.jpg', 'train/x.jpg'): id used 2 times in 'images', "
            "so its annotations cannot be attributed (1 not used)",
        ),
        ("coco.json", "annotation id 2: 'bbox' must be 4 finite numbers [x, y, width, height], got [20, 10, 40]"),
        ("coco.json", "annotation id 3: zero or negative box size (width -5, height 40)"),
        ("coco.json", "annotation id 4: category_id 7 is not in 'categories'"),
        ("coco.json", "annotation id 5: image_id 99 is not in 'images'"),
        ("coco.json", "annotation id 6: iscrowd=1 (a crowd region, not one object)"),
        ("coco.json", "annotation id 7: 'bbox' must be 4 finite numbers [x, y, width, height], got ['a', 0, 5, 5]"),
        ("coco.json", "images entry id 2: names image 'missing.jpg', which is not in the batch (1 boxes not used)"),
        ("coco.json", "images entry id 3: image name '..\\\\..\\\\secret.jpg' climbs out of its folder with '..'"),
        (
            "coco.json",
            "images entry id 4: image name 'x.jpg' is ambiguous: matches 2 images equally well "
            "(images/train/x.jpg, images/val/x.jpg)",
        ),
        ("coco.json", "images entry id 5: image name 'b.jpg\\x00.png' contains a NUL character"),
        ("broken.json", "not valid JSON: Expecting value at line 1 column 13"),
        ("other.json", "not a COCO file: no 'images' list"),
    }
    images = by_path(result)
    assert_corners(images["images/train/a.jpg"].boxes, [("scratch", 20, 10, 60, 50, False)])
    assert not any(images[p].labelled for p in ("images/train/x.jpg", "images/val/x.jpg", "images/b.jpg"))


def test_coco_image_listed_in_two_files_is_a_duplicate_annotation(tmp_path):
    write(
        tmp_path,
        {
            "a.jpg": image_bytes(64, 64),
            "one.json": coco_doc(
                [{"id": 1, "file_name": "a.jpg"}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}]
            ),
            "two.json": coco_doc([{"id": 5, "file_name": "a.jpg"}], []),
        },
    )
    result = parse(tmp_path, "coco")
    assert reasons(result.rejections) == {
        (
            "one.json",
            "duplicate annotation: images entry id 1 of one.json annotates a.jpg, "
            "which images entry id 5 of two.json also annotates",
        ),
        (
            "two.json",
            "duplicate annotation: images entry id 5 of two.json annotates a.jpg, "
            "which images entry id 1 of one.json also annotates",
        ),
    }
    assert result.images[0].labelled is False


# -- LabelMe -----------------------------------------------------------------------------------------


def labelme_doc(image_path, shapes, width=200, height=100) -> dict:
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": [
            {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}
            for label, kind, points in shapes
        ],
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }


def test_labelme_shapes_become_bounding_boxes(tmp_path):
    write(
        tmp_path,
        {
            "images/a.jpg": image_bytes(200, 100),
            "images/b.jpg": image_bytes(100, 100),
            "annotations/a.json": labelme_doc(
                "..\\images\\a.jpg",  # Windows separators, relative to the json's folder
                [
                    ("scratch", "polygon", [[30, 20], [70, 10], [60, 50], [20, 40]]),
                    ("dent", "rectangle", [[160, 80], [120, 40]]),  # corners in either order
                    ("pit", "circle", [[100, 50], [103, 54]]),  # centre and a point on the rim: r = 5
                    ("scratch", "linestrip", [[0, 0], [10, 5], [20, 2]]),
                    ("scratch", "line", [[40, 90], [50, 95]]),
                    ("pit", None, [[1, 1], [5, 1], [3, 4]]),  # old files: no shape_type means polygon
                ],
            ),
            "b.json": labelme_doc("", [("dent", "rectangle", [[10, 10], [20, 30]])], 100, 100),  # empty path: by stem
            "images/c.jpg": image_bytes(100, 100),
            "annotations/c.json": labelme_doc("c.jpg", [], 100, 100),  # stale path: matched on base name
        },
    )
    result = parse(tmp_path, "labelme")
    assert result.rejections == []
    images = by_path(result)
    assert images["images/c.jpg"].annotation_path == "annotations/c.json"
    assert_corners(
        images["images/a.jpg"].boxes,
        [
            ("scratch", 20, 10, 70, 50, False),
            ("dent", 120, 40, 160, 80, False),
            ("pit", 95, 45, 105, 55, False),
            ("scratch", 0, 0, 20, 5, False),
            ("scratch", 40, 90, 50, 95, False),
            ("pit", 1, 1, 5, 4, False),
        ],
    )
    assert images["images/b.jpg"].annotation_path == "b.json"
    rows, rejections, notes = canonical(tmp_path, result)
    assert rejections == [] and notes == []
    assert_boxes(
        box_values(rows["images/a.jpg"])[:3],
        [("scratch", 0, 0.225, 0.3, 0.25, 0.4), ("dent", 1, 0.7, 0.6, 0.2, 0.4), ("pit", 2, 0.5, 0.5, 0.05, 0.1)],
    )
    assert_boxes(box_values(rows["images/b.jpg"]), [("dent", 1, 0.15, 0.2, 0.1, 0.2)])


def test_labelme_malformed_files_and_shapes(tmp_path):
    write(
        tmp_path,
        {
            "a.jpg": image_bytes(200, 100),
            "b.jpg": image_bytes(200, 100),
            "a.json": labelme_doc(
                "a.jpg",
                [
                    ("scratch", "rectangle", [[10, 10], [50, 40]]),  # good
                    ("pit", "point", [[5, 5]]),
                    ("dent", "mask", [[0, 0], [9, 9]]),
                    ("dent", "polygon", [[0, 0], [9, 9]]),
                    ("dent", "rectangle", [[0, "a"], [9, 9]]),
                    ("dent", "line", [[0, 5], [9, 5]]),  # horizontal: no height
                    ("", "rectangle", [[0, 0], [9, 9]]),
                ],
                width=400,
            ),
            "drive.json": labelme_doc("C:\\Users\\op\\b.jpg", []),
            "climb.json": labelme_doc("../../b.jpg", []),
            "ghost.json": labelme_doc("ghost.jpg", []),
            "coco_like.json": {"images": []},
            "broken.json": "{'shapes': []}",
        },
    )
    result = parse(tmp_path, "labelme")
    assert reasons(result.rejections) == {
        ("a.json", "shape 2 (pit): a point has no extent, so it is not a box"),
        ("a.json", "shape 3 (dent): shape_type 'mask' is not supported (rectangle, polygon, linestrip, line, circle)"),
        ("a.json", "shape 4 (dent): a polygon needs at least 3 points, got 2"),
        ("a.json", "shape 5 (dent): 'points' must be a list of [x, y] number pairs"),
        ("a.json", "shape 6 (dent): line has zero or negative box size (width 9, height 0)"),
        ("a.json", "shape 7: missing 'label'"),
        ("drive.json", "image name 'C:\\\\Users\\\\op\\\\b.jpg' is an absolute Windows path (drive letter)"),
        ("climb.json", "image name '../../b.jpg' climbs out of the batch with '..'"),
        ("ghost.json", "names image 'ghost.jpg', which is not in the batch"),
        ("coco_like.json", "not a LabelMe file: no 'shapes' list"),
        ("broken.json", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    }
    images = by_path(result)
    assert_corners(images["a.jpg"].boxes, [("scratch", 10, 10, 50, 40, False)])
    assert images["b.jpg"].labelled is False
    rows, rejections, notes = canonical(tmp_path, result)
    assert notes == [
        "a.json: declares 400x100 for a.jpg, the image is 200x100; boxes are normalised by the image's size"
    ]
    assert_boxes(box_values(rows["a.jpg"]), [("scratch", 0, 0.15, 0.25, 0.2, 0.3)])


# -- native "alumi" sidecars -------------------------------------------------------------------------


def sidecar(image: str, boxes: list[dict], **overrides) -> dict:
    doc = {
        "image": image,
        "line_id": "L1",
        "camera_id": "cam-a",
        "captured_at": "2026-11-20T08:30:00Z",
        "width": 200,
        "height": 100,
        "boxes": boxes,
    }
    doc.update(overrides)
    return doc


def test_alumi_sidecars_parse_with_capture_metadata(tmp_path):
    write(
        tmp_path,
        {
            "L1/cam-a/s1.png": image_bytes(200, 100, 3, ".png"),
            "L1/cam-a/s1.json": sidecar(
                "s1.png",
                [
                    {"class_name": "scratch", "x_center": 0.5, "y_center": 0.5, "width": 0.2, "height": 0.4},
                    {"class_name": "pit", "x_center": 0.1, "y_center": 0.9, "width": 0.1, "height": 0.1},
                ],
            ),
            "L1/cam-a/s2.png": image_bytes(200, 100, 3, ".png"),
            "L1/cam-a/s2.json": sidecar("s2.png", [], captured_at="2026-11-20T09:30:00+01:00"),
            "L2/cam-b/s3.jpg": image_bytes(200, 100),  # no sidecar
        },
    )
    result = parse(tmp_path, "alumi")
    assert result.rejections == []
    images = by_path(result)
    s1, s2, s3 = images["L1/cam-a/s1.png"], images["L1/cam-a/s2.png"], images["L2/cam-b/s3.jpg"]
    assert s1.extra == {"line_id": "L1", "camera_id": "cam-a", "captured_at": "2026-11-20T08:30:00Z"}
    assert (s1.declared_width, s1.declared_height, s1.annotation_path) == (200, 100, "L1/cam-a/s1.json")
    assert_corners(s1.boxes, [("scratch", 0.4, 0.3, 0.6, 0.7, True), ("pit", 0.05, 0.85, 0.15, 0.95, True)])
    assert s2.labelled and s2.boxes == [] and s2.extra["captured_at"] == "2026-11-20T08:30:00Z"
    assert (s3.labelled, s3.extra) == (False, {"line_id": "L2", "camera_id": "cam-b"})
    rows, rejections, notes = canonical(tmp_path, result, fmt="alumi")
    assert rejections == [] and notes == []
    assert_boxes(
        box_values(rows["L1/cam-a/s1.png"]), [("scratch", 0, 0.5, 0.5, 0.2, 0.4), ("pit", 2, 0.1, 0.9, 0.1, 0.1)]
    )


def test_alumi_malformed_sidecars(tmp_path):
    good_box = {"class_name": "dent", "x_center": 0.5, "y_center": 0.5, "width": 0.2, "height": 0.2}
    write(
        tmp_path,
        {
            **{f"L1/cam-a/{stem}.png": image_bytes(32, 32, 3, ".png") for stem in "abcdefgh"},
            "L1/cam-a/a.json": sidecar(
                "a.png",
                [
                    good_box,
                    {"class_name": "dent", "x_center": "0.5", "y_center": None, "width": 0.2, "height": 0.2},
                    {"class_name": "pit", "x_center": 0.5, "y_center": 0.5, "width": -0.2, "height": 0.2},
                    {"x_center": 0.5, "y_center": 0.5, "width": 0.2, "height": 0.2},
                ],
                width=32,
                height=32,
            ),
            "L1/cam-a/b.json": sidecar("b.png", [good_box], line_id="L9"),
            "L1/cam-a/c.json": sidecar("c.png", [good_box], captured_at="yesterday"),
            "L1/cam-a/d.json": {k: v for k, v in sidecar("d.png", []).items() if k != "camera_id"},
            "L1/cam-a/e.json": sidecar("../../../e.png", []),
            "L1/cam-a/f.json": sidecar("missing.png", []),
            "L1/cam-a/g.json": sidecar("g.png", [], width=0),
            "L1/cam-a/h.json": sidecar("h.png", [], captured_at="2026-11-20T08:30:00"),  # naive: taken as UTC
            "L1/cam-b/z.png": image_bytes(32, 32, 3, ".png"),
            "L1/cam-a/z.json": sidecar("z.png", []),  # z.png exists, but under another camera
        },
    )
    result = parse(tmp_path, "alumi")
    assert reasons(result.rejections) == {
        ("L1/cam-a/a.json", "box 2 (dent): 'y_center' is None, not a finite number"),
        ("L1/cam-a/a.json", "box 3 (pit): zero or negative box size (width -0.2, height 0.2)"),
        ("L1/cam-a/a.json", "box 4: missing 'class_name'"),
        ("L1/cam-a/b.json", "field 'line_id' is 'L9' but the sidecar lies in folder 'L1'"),
        ("L1/cam-a/c.json", "field 'captured_at' 'yesterday' is not an ISO-8601 timestamp"),
        ("L1/cam-a/d.json", "field 'camera_id' must be a non-empty string"),
        ("L1/cam-a/e.json", "image name '../../../e.png' climbs out of the batch with '..'"),
        ("L1/cam-a/f.json", "names image 'missing.png', which is not in its folder L1/cam-a"),
        ("L1/cam-a/g.json", "fields 'width' and 'height' must be positive integers, got 0x100"),
        ("L1/cam-a/z.json", "names image 'z.png', which is not in its folder L1/cam-a"),
    }
    images = by_path(result)
    assert_corners(images["L1/cam-a/a.png"].boxes, [("dent", 0.4, 0.4, 0.6, 0.6, True)])  # "0.5" as text is accepted
    assert images["L1/cam-a/b.png"].labelled is False
    assert images["L1/cam-a/h.png"].extra["captured_at"] == "2026-11-20T08:30:00Z"
    assert "L1/cam-a/h.json: captured_at '2026-11-20T08:30:00' has no time zone; taken as UTC" in result.notes


# -- shared rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, problem",
    [
        ("a.jpg", None),
        ("sub/dir/a b.jpg", None),
        ("sub\\dir\\a.jpg", None),
        ("../a.jpg", "climbs out of its folder with '..'"),
        ("sub\\..\\..\\a.jpg", "climbs out of its folder with '..'"),
        ("/etc/passwd", "is an absolute path"),
        ("\\\\server\\share\\a.jpg", "is an absolute path"),
        ("C:\\images\\a.jpg", "is an absolute Windows path (drive letter)"),
        ("d:/a.jpg", "is an absolute Windows path (drive letter)"),
        ("a.jpg\x00.txt", "contains a NUL character"),
        ("file:///tmp/a.jpg", "is a URL, not a file in the batch"),
    ],
)
def test_path_tricks(name, problem):
    assert formats.path_trick(name) == problem


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="label format 'csv' is not one of alumi, yolo, voc, coco, labelme"):
        formats.parse_batch("csv", [], lambda p: b"")


def test_pixel_coordinates_in_a_normalised_format_get_a_hint():
    image = AnnotatedImage("a.jpg", "a.txt", True, [SourceBox("0", 40, 40, 60, 60, True, "label line 1")])
    rows, rejections, _ = formats.to_canonical_rows(
        image, 100, 100, 3, ClassMap.of(["scratch"], {"0": "scratch"}), image_id="x", source="yolo", batch="b"
    )
    assert rows == []
    assert reasons(rejections) == {
        (
            "a.txt",
            "label line 1: box extends 5900.0% of the image outside it (limit 2%); "
            "coordinates must be fractions of the image, these look like pixels",
        )
    }


def test_exact_duplicate_boxes_are_dropped_with_a_note():
    image = AnnotatedImage(
        "a.jpg",
        "a.txt",
        True,
        [
            SourceBox("0", 0.1, 0.1, 0.3, 0.3, True, "label line 1"),
            SourceBox("0", 0.1, 0.1, 0.3, 0.3, True, "label line 2"),
        ],
    )
    rows, rejections, notes = formats.to_canonical_rows(
        image, 100, 100, 3, ClassMap.of(["scratch"], {"0": "scratch"}), image_id="x", source="yolo", batch="b"
    )
    assert len(rows) == 1 and rejections == []
    assert notes == ["a.txt: label line 2: exact duplicate of an earlier scratch box, dropped"]


def test_byte_identical_images_keep_one_label_set_or_reject_conflicting_ones():
    def image(path, *boxes):
        return AnnotatedImage(path, path.replace(".jpg", ".txt"), True, [SourceBox(c, *xy, True) for c, *xy in boxes])

    images = [
        image("a.jpg", ("0", 0.1, 0.1, 0.3, 0.3)),
        image("a_copy.jpg", ("0", 0.11, 0.1, 0.31, 0.3)),  # same object, redrawn: agrees
        image("b.jpg", ("0", 0.1, 0.1, 0.3, 0.3)),
        image("b_copy.jpg", ("1", 0.1, 0.1, 0.3, 0.3)),  # other class: conflicts
        AnnotatedImage("c.jpg", "", False, []),
        image("c_copy.jpg", ("1", 0.5, 0.5, 0.6, 0.6)),  # only one copy labelled: kept
        image("d.jpg"),
    ]
    ids = {
        "a.jpg": "A",
        "a_copy.jpg": "A",
        "b.jpg": "B",
        "b_copy.jpg": "B",
        "c.jpg": "C",
        "c_copy.jpg": "C",
        "d.jpg": "D",
    }
    kept, rejections, notes = formats.merge_identical_images(images, ids)
    assert [(im.image_path, im.labelled, len(im.boxes)) for im in kept] == [
        ("a.jpg", True, 1),
        ("b.jpg", False, 0),
        ("c_copy.jpg", True, 1),
        ("d.jpg", True, 0),
    ]
    assert reasons(rejections) == {
        ("b.txt", "duplicate annotations: b.jpg is byte-identical to b_copy.jpg and their labels disagree"),
        ("b_copy.txt", "duplicate annotations: b_copy.jpg is byte-identical to b.jpg and their labels disagree"),
    }
    assert notes == [
        "a.jpg: byte-identical copies a_copy.jpg kept once (their labels agree; kept this copy's)",
        "b.jpg: byte-identical copies b_copy.jpg with conflicting labels: kept unlabelled",
        "c_copy.jpg: byte-identical copies c.jpg kept once",
    ]


def test_json_nested_too_deeply_is_rejected_without_stopping_the_batch():
    blobs = {
        "a.json": b"[" * 200_000 + b"]" * 200_000,
        "b.json": json.dumps({"imagePath": "b.jpg", "shapes": []}).encode(),
    }
    for fmt in ("coco", "labelme", "alumi"):
        result = formats.parse_batch(fmt, ["a.json", "b.jpg", "b.json"], blobs.__getitem__)
        assert ("a.json", "not valid JSON: nested too deeply to parse") in reasons(result.rejections)
        assert [im.image_path for im in result.images] == ["b.jpg"]
    assert formats.parse_batch("labelme", ["a.json", "b.jpg", "b.json"], blobs.__getitem__).images[0].labelled is True
