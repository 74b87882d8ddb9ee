"""Import of the real CR7-DET sample (YOLO layout image/ + label/, classes.txt, names with spaces)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from alumi_pipelines.lib.vision import formats
from alumi_pipelines.lib.vision.imaging import parallel_map, probe
from alumi_pipelines.lib.vision.labels import ClassMap

CR7_CLASSES = ["inclusions", "dents", "oil_spots", "pits", "punching", "linear", "macular"]

# Measured on the sample once; the test also recomputes them from the raw files with simple code.
IMAGES = 1415
BOXES = 3815
BOXES_PER_CLASS = {
    "inclusions": 666,
    "dents": 434,
    "oil_spots": 608,
    "pits": 678,
    "punching": 430,
    "linear": 526,
    "macular": 473,
}
IDENTICAL_PAIRS = 14
CONFLICTING_PAIR = ("image/pits203.jpg", "image/pits504.jpg")  # same bytes, different boxes


@pytest.fixture
def cr7(cr7_dir: Path):
    """(root, listing, parse result) for the sample (parsing takes a fraction of a second)."""
    root = cr7_dir
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    result = formats.parse_batch("yolo", files, lambda rel: (root / rel).read_bytes())
    return root, files, result


def raw_counts(root: Path) -> tuple[int, Counter]:
    """Images and boxes per class id straight from the files, independently of the parser."""
    images = len(list((root / "image").glob("*.jpg")))
    per_class: Counter = Counter()
    for label in (root / "label").glob("*.txt"):
        for line in label.read_text().split("\n"):
            if line.strip():
                per_class[int(line.split()[0])] += 1
    return images, per_class


def test_cr7_parse_finds_every_image_label_and_box(cr7):
    root, files, result = cr7
    names = (root / "classes.txt").read_text().split()
    raw_images, raw_per_class = raw_counts(root)
    expected_per_class = {names[k]: n for k, n in raw_per_class.items()}
    assert (raw_images, expected_per_class) == (IMAGES, BOXES_PER_CLASS)

    assert result.class_names == CR7_CLASSES
    assert len(result.images) == IMAGES
    assert sum(im.labelled for im in result.images) == IMAGES
    parsed_per_class = Counter(result.class_names[int(b.class_name)] for im in result.images for b in im.boxes)
    assert dict(parsed_per_class) == BOXES_PER_CLASS
    assert sum(parsed_per_class.values()) == BOXES
    assert result.rejections == []
    assert result.notes == [
        "ignored 1 files that are neither images nor annotations: README.md",
        "1415 images, 1415 labelled, 0 rejections",
    ]
    # Names with spaces pair by stem; the last line of a file without a trailing newline is kept.
    spots = {im.image_path: im for im in result.images}["image/oil spots11.jpg"]
    raw = (root / "label" / "oil spots11.txt").read_bytes()
    assert not raw.endswith(b"\n")
    assert spots.annotation_path == "label/oil spots11.txt"
    assert len(spots.boxes) == len(raw.decode().split("\n"))


def test_cr7_canonical_rows_match_the_raw_labels(cr7):
    root, files, result = cr7
    class_map = formats.source_class_map(ClassMap.of(CR7_CLASSES), result.class_names)
    infos = dict(parallel_map(lambda im: (im.image_path, probe((root / im.image_path).read_bytes())), result.images))
    assert Counter((i.width, i.height, i.channels) for i in infos.values()) == {(400, 400, 3): 1304, (400, 400, 1): 111}

    rows, rejections, notes = [], [], []
    for image in result.images:
        info = infos[image.image_path]
        r, rej, n = formats.to_canonical_rows(
            image,
            info.width,
            info.height,
            info.channels,
            class_map,
            image_id=image.image_path,
            source="yolo",
            batch="import-cr7",
        )
        rows += r
        rejections += rej
        notes += n
    # 395 boxes overshoot the border by <= 1e-6 (6-decimal rounding): clipped without a note.
    assert rejections == [] and notes == []
    assert len(rows) == BOXES
    assert dict(Counter(r["class_name"] for r in rows)) == BOXES_PER_CLASS
    assert all(0.0 <= r["x_center"] - r["width"] / 2 and r["x_center"] + r["width"] / 2 <= 1.0 + 1e-12 for r in rows)

    first = [r for r in rows if r["image_id"] == "image/dents1.jpg"]
    assert [(r["class_name"], r["class_id"]) for r in first] == [("dents", 1), ("dents", 1)]
    r = first[0]
    assert [r["x_center"], r["y_center"], r["width"], r["height"]] == pytest.approx([0.745625, 0.8865, 0.41225, 0.227])
    assert first[0]["source_file"] == "label/dents1.txt"


def test_cr7_byte_identical_images_are_merged_or_rejected(cr7):
    root, files, result = cr7
    ids = {im.image_path: hashlib.sha256((root / im.image_path).read_bytes()).hexdigest() for im in result.images}
    pairs = [paths for paths in _groups(ids).values() if len(paths) > 1]
    assert len(pairs) == IDENTICAL_PAIRS and all(len(p) == 2 for p in pairs)

    kept, rejections, notes = formats.merge_identical_images(result.images, ids)
    assert len(kept) == IMAGES - IDENTICAL_PAIRS
    assert len({ids[im.image_path] for im in kept}) == len(kept)
    assert sum(im.labelled for im in kept) == IMAGES - IDENTICAL_PAIRS - 1
    assert sorted((r.path, r.reason) for r in rejections) == [
        (
            "label/pits203.txt",
            "duplicate annotations: image/pits203.jpg is byte-identical to image/pits504.jpg and their labels disagree",
        ),
        (
            "label/pits504.txt",
            "duplicate annotations: image/pits504.jpg is byte-identical to image/pits203.jpg and their labels disagree",
        ),
    ]
    assert sum("their labels agree" in n for n in notes) == IDENTICAL_PAIRS - 1
    assert (
        f"{CONFLICTING_PAIR[0]}: byte-identical copies {CONFLICTING_PAIR[1]} with conflicting labels: kept unlabelled"
        in notes
    )


def _groups(ids: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for path, image_id in ids.items():
        groups.setdefault(image_id, []).append(path)
    return groups
