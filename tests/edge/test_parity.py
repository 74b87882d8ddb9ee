"""The edge pipeline reproduces ultralytics predictions on an exported ONNX (boxes, classes, confidences)."""

from __future__ import annotations

import numpy as np
import pytest

IMGSZ = 128
CONF = 0.001
IOU = 0.7


def _synthetic_dataset(root, count: int = 12):
    """Grey noisy plates with dark scratches (class 0) and bright dents (class 1), YOLO layout."""
    import cv2

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for i in range(count):
        split = "val" if i % 4 == 0 else "train"
        image = np.clip(rng.normal(150, 12, (IMGSZ, IMGSZ, 3)), 0, 255).astype(np.uint8)
        labels = []
        for _ in range(rng.integers(1, 3)):
            if rng.random() < 0.5:
                x, y = rng.integers(8, 60, 2)
                w, h = rng.integers(40, 60), rng.integers(4, 8)
                cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), (40, 40, 40), -1)
                labels.append((0, x + w / 2, y + h / 2, w, h))
            else:
                cx, cy, r = *rng.integers(24, 104, 2), int(rng.integers(8, 16))
                cv2.circle(image, (int(cx), int(cy)), r, (240, 240, 240), -1)
                labels.append((1, cx, cy, 2 * r, 2 * r))
        cv2.imwrite(str(root / "images" / split / f"{i}.png"), image)
        lines = [f"{c} {x / IMGSZ:.6f} {y / IMGSZ:.6f} {w / IMGSZ:.6f} {h / IMGSZ:.6f}" for c, x, y, w, h in labels]
        (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: scratch\n  1: dent\n")
    return data


@pytest.fixture(scope="session")
def yolo_onnx(tmp_path_factory, _isolated_home):
    """A yolo11n trained for 3 epochs on 12 synthetic images, exported to ONNX at 128 px."""
    from alumi_pipelines.lib.training.offline import import_ultralytics

    work = tmp_path_factory.mktemp("yolo")
    try:
        ultralytics = import_ultralytics(_isolated_home / "ultralytics")
    except KeyError:  # a settings key this ultralytics version does not know; the env vars already keep it offline
        import ultralytics
    data = _synthetic_dataset(work / "data")
    model = ultralytics.YOLO("yolo11n.yaml")
    model.train(
        data=str(data),
        epochs=3,
        imgsz=IMGSZ,
        batch=4,
        workers=0,
        device="cpu",
        project=str(work / "runs"),
        name="train",
        plots=False,
        val=False,
        amp=False,
        verbose=False,
        seed=0,
        deterministic=True,
    )
    onnx_path = model.export(format="onnx", imgsz=IMGSZ, device="cpu", simplify=True, verbose=False)
    return ultralytics, onnx_path


def _test_images():
    import cv2

    rng = np.random.default_rng(3)
    images = []
    for h, w in [(128, 128), (150, 200), (97, 301), (260, 90)]:
        image = np.clip(rng.normal(150, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        cv2.rectangle(image, (w // 5, h // 3), (w // 5 + w // 2, h // 3 + 5), (40, 40, 40), -1)
        cv2.circle(image, (3 * w // 4, 3 * h // 4), max(4, min(h, w) // 10), (240, 240, 240), -1)
        images.append(image)
    return images


def test_onnx_detections_match_ultralytics_predict(yolo_onnx):
    from alumi_edge.runtimes import OnnxRuntime

    ultralytics, onnx_path = yolo_onnx
    runtime = OnnxRuntime(onnx_path, device="cpu").load()
    assert runtime.info.names == ("scratch", "dent")
    assert runtime.info.input_hw == (IMGSZ, IMGSZ)
    assert runtime.info.stride == 32
    reference = ultralytics.YOLO(str(onnx_path), task="detect")
    compared = 0
    for image in _test_images():
        theirs = reference.predict(image, conf=CONF, iou=IOU, imgsz=IMGSZ, device="cpu", verbose=False)[0].boxes
        ours = runtime.detect(image, conf=CONF, iou=IOU)
        assert (ours.width, ours.height) == (image.shape[1], image.shape[0])
        their_boxes = theirs.xyxy.numpy()
        their_conf = theirs.conf.numpy()
        their_cls = theirs.cls.numpy().astype(int)
        assert len(ours.boxes) == len(their_conf), f"image {image.shape}: {len(ours.boxes)} vs {len(their_conf)} boxes"
        our_order = np.argsort([-b.confidence for b in ours.boxes], kind="stable")
        their_order = np.argsort(-their_conf, kind="stable")
        for i, j in zip(our_order, their_order):
            box = ours.boxes[i]
            assert box.class_id == their_cls[j]
            assert box.confidence == pytest.approx(float(their_conf[j]), abs=1e-5)
            np.testing.assert_allclose([box.x1, box.y1, box.x2, box.y2], their_boxes[j], atol=1e-3)
        compared += len(their_conf)
    assert compared >= 10, f"only {compared} boxes predicted: too few to compare"
