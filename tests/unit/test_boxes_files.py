"""The shared box and file helpers: one IoU (scalar, centre/size and array forms), one sha256, one atomic write."""

import hashlib
import os

import numpy as np
import pytest

from alumi_pipelines.lib import boxes, files


def test_iou_of_known_boxes():
    # 10x10 squares overlapping in a 5x10 strip: 50 / (100 + 100 - 50)
    assert boxes.iou_xyxy((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert boxes.iou_xyxy((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    # a 2x2 box inside a 4x4 box: 4 / 16
    assert boxes.iou_xyxy((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(0.25)


def test_no_overlap_and_empty_boxes_give_zero():
    assert boxes.iou_xyxy((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert boxes.iou_xyxy((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # touching edges only
    assert boxes.iou_xyxy((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert boxes.iou_cxcywh((0.1, 0.1, 0.1, 0.1), (0.9, 0.9, 0.1, 0.1)) == 0.0


def test_centre_size_conversion_and_iou():
    assert boxes.corners((0.5, 0.5, 0.2, 0.4)) == pytest.approx((0.4, 0.3, 0.6, 0.7))
    a, b = (0.5, 0.5, 0.2, 0.2), (0.6, 0.5, 0.2, 0.2)  # same as the xyxy pair (0.4..0.6) and (0.5..0.7)
    assert boxes.iou_cxcywh(a, b) == pytest.approx(boxes.iou_xyxy(boxes.corners(a), boxes.corners(b)))
    assert boxes.iou_cxcywh(a, b) == pytest.approx(1 / 3)


def test_iou_cxcywh_matches_the_label_formula_exactly():
    # the gold and corrections stages computed the union from width * height; the shared one must too
    a, b = (0.3141, 0.2718, 0.1234, 0.0987), (0.3301, 0.2699, 0.1111, 0.1013)
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = (min(ax2, bx2) - max(ax1, bx1)) * (min(ay2, by2) - max(ay1, by1))
    assert boxes.iou_cxcywh(a, b) == inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_array_iou_agrees_with_scalar():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, size=(7, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 30, size=(7, 2))], axis=1)
    xy = rng.uniform(0, 50, size=(5, 2))
    b = np.concatenate([xy, xy + rng.uniform(1, 30, size=(5, 2))], axis=1)
    matrix = boxes.box_iou(a, b)
    assert matrix.shape == (7, 5)
    expected = [[boxes.iou_xyxy(p, q) for q in b] for p in a]
    np.testing.assert_allclose(matrix, expected, rtol=1e-12, atol=1e-15)
    assert (matrix == 0).any() and (matrix > 0).any()


def test_edge_package_scalar_iou_is_the_same_formula():
    from alumi_edge.processing import iou_xyxy

    pairs = [((0, 0, 10, 10), (5, 0, 15, 10)), ((0, 0, 1, 1), (2, 2, 3, 3)), ((1.5, 2.25, 7, 9.5), (2, 1, 6.5, 8))]
    for a, b in pairs:
        assert iou_xyxy(a, b) == boxes.iou_xyxy(a, b)


def test_sha256_of_bytes_and_of_a_file(tmp_path):
    assert files.sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
    data = os.urandom(3 * (1 << 20) + 17)  # several read chunks and a partial one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert files.file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert files.file_sha256(str(path)) == files.sha256_hex(data)


def test_write_atomic_creates_and_replaces_without_leftovers(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # the folder does not exist yet
    assert files.write_atomic(target, b"first") == str(target)
    assert target.read_bytes() == b"first"
    files.write_atomic(target, b"second", fsync=False)
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]
    assert not [p for p in target.parent.iterdir() if p.name.startswith(files.TMP_PREFIX)]


def test_edge_package_write_atomic_replaces_without_leftovers(tmp_path):
    from alumi_edge.files import TMP_PREFIX, write_atomic

    target = tmp_path / "cache" / "engine.bin"
    write_atomic(target, b"old", fsync_parent=True)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["engine.bin"]  # no TMP_PREFIX file left behind
    assert TMP_PREFIX == files.TMP_PREFIX  # both packages name unfinished writes alike
