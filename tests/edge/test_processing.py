"""Letterbox, YOLO output decoding and NMS in numpy: exact numbers and agreement with ultralytics/torchvision."""

from __future__ import annotations

import numpy as np
import pytest

from alumi_edge.processing import (
    Letterbox,
    batched_nms,
    letterbox,
    letterbox_params,
    nms,
    postprocess,
    preprocess,
    scale_to_original,
    to_input_tensor,
    to_model_input,
)


@pytest.mark.parametrize(
    "orig_hw, input_hw, expected",
    [
        # (h, w) → resized (w, h), pad (left, top)
        ((100, 200), (64, 64), (64, 32, 0, 16)),
        # ultralytics val rounds the short side up (ceil(97 * 128 / 301) = ceil(41.25) = 42; predict's round gives 41)
        ((97, 301), (128, 128), (128, 42, 0, 43)),
        ((480, 640), (640, 640), (640, 480, 0, 80)),
        ((640, 480), (640, 640), (480, 640, 80, 0)),
        ((33, 33), (64, 64), (64, 64, 0, 0)),
        ((1, 3000), (160, 160), (160, 1, 0, 79)),
        # a non-square input: the long side to 128 first (1000 → 128 × 128), then shrunk to fit 96 rows
        ((1000, 1000), (96, 128), (96, 96, 16, 0)),
    ],
)
def test_letterbox_params_numbers(orig_hw, input_hw, expected):
    p = letterbox_params(orig_hw, input_hw)
    assert (p.resized_width, p.resized_height, p.pad_left, p.pad_top) == expected


# Smaller and larger than the input, odd sides, portrait and landscape, square, exact multiples.
VAL_SHAPES = [(97, 301), (301, 97), (120, 128), (33, 47), (61, 61), (128, 128), (255, 257), (400, 400), (1024, 1280)]


@pytest.mark.parametrize("input_hw", [(128, 128), (96, 96), (640, 640), (96, 128), (128, 64)])
def test_letterbox_is_ultralytics_val_input_pixel_for_pixel(tmp_path, input_hw):
    """The edge input tensor of an image is the one ultralytics val's own data loader makes (``rect=False``, mode
    ``val``: ``BaseDataset.load_image`` then ``LetterBox(scaleup=False)``, then ``/ 255`` as the validator does), and
    the placement (gains, padding) is the ``ratio_pad`` val maps boxes back with."""
    import cv2
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.utils import DEFAULT_CFG

    rng = np.random.default_rng(5)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i, (h, w) in enumerate(VAL_SHAPES):
        cv2.imwrite(str(tmp_path / "images" / f"im{i:02d}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        (tmp_path / "labels" / f"im{i:02d}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    imgsz = input_hw[0] if input_hw[0] == input_hw[1] else list(input_hw)
    cfg = get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "rect": False, "task": "detect"})
    data = {"names": {0: "defect"}, "nc": 1, "channels": 3}
    dataset = build_yolo_dataset(cfg, str(tmp_path / "images"), 4, data, mode="val", stride=32)
    assert len(dataset) == len(VAL_SHAPES)
    for i in range(len(dataset)):
        item = dataset[i]
        image = cv2.imread(item["im_file"], cv2.IMREAD_COLOR)
        ours, params = letterbox(image, input_hw)
        theirs = item["img"].float().numpy()[None] / np.float32(255.0)  # DetectionValidator.preprocess
        assert ours.shape[:2] == tuple(input_hw)
        np.testing.assert_array_equal(to_input_tensor(ours), theirs, err_msg=f"{image.shape} in {input_hw}")
        assert item["ratio_pad"] == ((params.gain_y, params.gain_x), (params.pad_left, params.pad_top))
        assert item["ori_shape"] == image.shape[:2]


def test_boxes_map_back_as_ultralytics_scale_boxes():
    """Detections go back to the original image as ultralytics' ``scale_boxes`` with val's ``ratio_pad`` maps
    them: minus the padding, over the per-axis gains, clipped to the image (or not, as val matches them)."""
    import torch
    from ultralytics.utils import ops

    rng = np.random.default_rng(11)
    for orig_hw, input_hw in [((97, 301), (128, 128)), ((301, 97), (96, 96)), ((33, 47), (64, 64))]:
        params = letterbox_params(orig_hw, input_hw)
        xy = rng.uniform(-10, max(input_hw), (50, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (50, 2)).astype(np.float32)], axis=1)
        ratio_pad = ((params.gain_y, params.gain_x), (params.pad_left, params.pad_top))
        theirs = ops.scale_boxes(input_hw, torch.from_numpy(boxes.copy()), orig_hw, ratio_pad=ratio_pad).numpy()
        np.testing.assert_array_equal(scale_to_original(boxes, params), theirs)
        unclipped = scale_to_original(boxes, params, clip=False)
        assert (unclipped < 0).any() and not (scale_to_original(boxes, params) < 0).any()
        np.testing.assert_array_equal(np.clip(unclipped[:, [0, 2]], 0, orig_hw[1]), theirs[:, [0, 2]])


def test_preprocess_tensor_is_rgb_chw_unit_range():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 2] = 255  # red in BGR
    tensor, _ = preprocess(image, (64, 64))
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == np.float32
    assert tensor[0, 0].min() == 1.0 and tensor[0, 1].max() == 0.0 and tensor[0, 2].max() == 0.0
    assert tensor.flags["C_CONTIGUOUS"]


def test_nms_hand_made_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # IoU(0,1) = 81/119 = 0.68; IoU(0,3) = 100/105 = 0.95
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.96).tolist() == [0, 1, 2, 3]
    # box 1 of another class is never suppressed by box 0
    classes = np.array([0, 1, 0, 0])
    assert sorted(batched_nms(boxes, scores, classes, 0.5).tolist()) == [0, 1, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []


def test_nms_matches_torchvision_on_random_boxes():
    import torch
    import torchvision

    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 100, (300, 2)).astype(np.float32)
    wh = rng.uniform(5, 40, (300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    for threshold in (0.3, 0.5, 0.7):
        theirs = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        assert nms(boxes, scores, threshold).tolist() == theirs.tolist()


def test_postprocess_decodes_yolo_output_to_original_pixels():
    # image 100x200 (h, w) letterboxed into 64x64: gain 0.32, pad top 16
    params = letterbox_params((100, 200), (64, 64))
    # 3 candidates, 2 classes: rows cx, cy, w, h, score0, score1
    output = np.array(
        [
            [
                [32.0, 32.5, 10.0],
                [32.0, 32.5, 20.0],
                [16.0, 16.0, 4.0],
                [8.0, 8.0, 4.0],
                [0.9, 0.85, 0.1],
                [0.1, 0.2, 0.2],
            ]
        ],
        np.float32,
    )
    det = postprocess(output, params, conf_threshold=0.25, iou_threshold=0.5)
    # candidate 1 overlaps candidate 0 (same class) and is suppressed; candidate 2 is under conf
    assert len(det) == 1
    assert det.class_ids.tolist() == [0]
    assert det.confidences.tolist() == pytest.approx([0.9])
    # input box (24, 28, 40, 36) → minus pad (0, 16) → / 0.32 → (75, 37.5, 125, 62.5)
    np.testing.assert_allclose(det.boxes[0], [75.0, 37.5, 125.0, 62.5], atol=1e-4)
    # at a low threshold the other class of candidate 2 appears, class-wise NMS keeps both classes
    det = postprocess(output, params, conf_threshold=0.15, iou_threshold=0.5)
    assert sorted(det.class_ids.tolist()) == [0, 1]


def test_postprocess_multi_label_keeps_every_class_above_the_threshold_as_ultralytics_val():
    params = letterbox_params((64, 64), (64, 64))
    # two far-apart candidates; the first scores 0.9 for class 0 and 0.6 for class 1
    output = np.array([[[16.0, 48.0], [16.0, 48.0], [8.0, 8.0], [8.0, 8.0], [0.9, 0.05], [0.6, 0.7]]], np.float32)
    single = postprocess(output, params, conf_threshold=0.25)
    found = sorted(zip(single.class_ids.tolist(), single.confidences.tolist()))
    assert [c for c, _ in found] == [0, 1] and [v for _, v in found] == pytest.approx([0.9, 0.7])
    multi = postprocess(output, params, conf_threshold=0.25, multi_label=True)
    found = sorted(zip(multi.class_ids.tolist(), multi.confidences.tolist()))
    assert [c for c, _ in found] == [0, 1, 1]  # the first box once per class: NMS is class-wise
    assert [v for _, v in found] == pytest.approx([0.9, 0.6, 0.7])
    assert len(postprocess(output, params, conf_threshold=0.25, multi_label=True, max_det=2)) == 2


def test_postprocess_clips_and_honours_max_det_and_strict_threshold():
    params = Letterbox(
        orig_height=64,
        orig_width=64,
        input_height=64,
        input_width=64,
        resized_width=64,
        resized_height=64,
        pad_left=0,
        pad_top=0,
    )
    output = np.zeros((1, 5, 4), np.float32)
    output[0, :4] = np.array([[2, 20, 40, 62], [2, 20, 40, 62], [10, 10, 10, 10], [10, 10, 10, 10]], np.float32)
    output[0, 4] = [0.5, 0.6, 0.7, 0.25]
    det = postprocess(output, params, conf_threshold=0.25, iou_threshold=0.7, max_det=2)
    assert det.confidences.tolist() == pytest.approx([0.7, 0.6])  # 0.25 is not > 0.25; max_det 2
    np.testing.assert_allclose(det.boxes, [[35, 35, 45, 45], [15, 15, 25, 25]])
    det = postprocess(output, params, conf_threshold=0.25, iou_threshold=0.7, max_det=3)
    np.testing.assert_allclose(det.boxes[2], [0, 0, 7, 7])  # (2-5, 2-5, 2+5, 2+5) clipped at 0


def test_postprocess_end_to_end_rows():
    params = letterbox_params((64, 64), (64, 64))
    rows = np.array([[[1, 2, 30, 40, 0.9, 1], [5, 5, 9, 9, 0.1, 0]]], np.float32)
    det = postprocess(rows, params, conf_threshold=0.25, end_to_end=True)
    assert det.class_ids.tolist() == [1]
    np.testing.assert_allclose(det.boxes[0], [1, 2, 30, 40])


def test_postprocess_rejects_bad_thresholds_and_shapes():
    params = letterbox_params((64, 64), (64, 64))
    with pytest.raises(ValueError, match="conf threshold"):
        postprocess(np.zeros((1, 6, 3), np.float32), params, conf_threshold=1.5)
    with pytest.raises(ValueError, match="batch of one"):
        postprocess(np.zeros((2, 6, 3), np.float32), params)


def test_scale_to_original_inverts_letterbox():
    params = letterbox_params((97, 301), (128, 128))
    original = np.array([[10.0, 20.0, 150.0, 90.0]], np.float32)
    as_input = original.copy()
    as_input[:, [0, 2]] = as_input[:, [0, 2]] * params.gain_x + params.pad_left
    as_input[:, [1, 3]] = as_input[:, [1, 3]] * params.gain_y + params.pad_top
    np.testing.assert_allclose(scale_to_original(as_input, params), original, atol=1e-3)


def test_input_tensor_is_bit_identical_to_the_plain_numpy_conversion():
    image = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    reference = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)[None] / np.float32(255.0)
    tensor = to_input_tensor(image)
    assert tensor.shape == (1, 3, 48, 80) and tensor.dtype == np.float32
    assert np.array_equal(tensor, reference)


def test_packed_pixel_input_and_its_errors():
    image = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    packed, params = preprocess(image, (64, 64), "bgr_u8_s2d2")
    letterboxed, _ = letterbox(image, (64, 64))
    assert packed.shape == (1, 32, 32, 12) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed[0, :, :, 0:3], letterboxed[0::2, 0::2])  # even rows, even columns
    np.testing.assert_array_equal(packed[0, :, :, 3:6], letterboxed[0::2, 1::2])
    np.testing.assert_array_equal(packed[0, :, :, 6:9], letterboxed[1::2, 0::2])
    np.testing.assert_array_equal(packed[0, :, :, 9:12], letterboxed[1::2, 1::2])
    np.testing.assert_array_equal(to_model_input(letterboxed), to_input_tensor(letterboxed))
    with pytest.raises(ValueError, match="51x40: packing 2x2 blocks needs even sides"):
        to_model_input(np.zeros((40, 51, 3), np.uint8), "bgr_u8_s2d2")
    with pytest.raises(ValueError, match="float32"):
        to_model_input(np.zeros((40, 50, 3), np.float32), "bgr_u8_s2d2")
    with pytest.raises(ValueError, match="input format 'nhwc'"):
        to_model_input(letterboxed, "nhwc")
