"""One mAP: ``detector_evaluation``'s validation (ultralytics val, ``rect=False``) and the export gates
(``detection_map`` on the edge runtime's detections of the exported ONNX, and of the checkpoint through the same
gate code) score the same model on the same test split alike.

The model is the export tests' champion (3 epochs, head sharpened, exported by ``export_job``). On the synthetic
defect labels it scores about 0.002 mAP50, less than the tolerance itself, so here the test split is labelled with
its own confident boxes (stock ultralytics predict at the edge server's 0.25), each moved by up to 10 % and resized
by up to ±10 % of its size (seeded): mAP50-95 then lies well inside (0, 1) and every IoU threshold counts, so a
different box mapping, clipping, NMS or matching shows (clipping the gates' boxes to the image, as val does not,
moved mAP50 by about 0.15 on such a split). The images have sizes below and above the input, odd, portrait and
landscape; ``tests/edge/test_processing.py`` checks that the letterbox is val's pixel for pixel.
"""

from __future__ import annotations

import pytest
from export_factory import CLASSES, IMGSZ

# (width, height) of the test images: the input is IMGSZ = 96 square.
SHAPES = [(128, 120), (77, 140), (200, 90), (61, 61), (150, 150), (96, 96), (301, 97), (45, 70)]
# ONNX Runtime and PyTorch run the same network in float32 with different kernels: scores and boxes differ in the
# last bits, which can swap two detections' ranks or move an IoU across a threshold. The checkpoint through the
# gate code runs the very network val runs, on the same input; what is left: val runs a batch, the gate one image at a
# time, and val computes IoU in letterboxed pixels, the gate in original ones (the same IoU up to float rounding).
ONNX_TOLERANCE = 0.002
TORCH_TOLERANCE = 0.001


@pytest.fixture(scope="module")
def relabelled_split(export_run, tmp_path_factory, ultralytics_dir):
    """A YOLO folder whose test split is labelled with the champion's own jittered confident boxes."""
    import cv2
    import numpy as np
    import yaml

    from alumi_pipelines.lib.export.predict import DEPLOY_CONF
    from alumi_pipelines.lib.training.offline import import_ultralytics
    from alumi_pipelines.lib.vision.synth import render_image

    import_ultralytics(ultralytics_dir)
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("one_map")
    images, labels = root / "images" / "test", root / "labels" / "test"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    paths = []
    for i, (w, h) in enumerate(SHAPES):
        path = images / f"im{i}_{w}x{h}.png"
        cv2.imwrite(str(path), render_image(500 + i, w, h, classes=CLASSES).image)
        paths.append(path)
    model = YOLO(str(export_run.root / "best.pt"))  # stock ultralytics predict: labels owe nothing to the code tested
    found = [
        model.predict(str(p), imgsz=IMGSZ, conf=DEPLOY_CONF, device="cpu", verbose=False, save=False)[0].boxes
        for p in paths
    ]
    rng = np.random.default_rng(3)
    kept = 0
    for path, (w, h), det in zip(paths, SHAPES, found):
        rows = []
        for box, cls in zip(det.xyxy.numpy(), det.cls.numpy()):
            bw, bh = box[2] - box[0], box[3] - box[1]
            if bw < 1 or bh < 1:
                continue
            cx = (box[0] + box[2]) / 2 + rng.uniform(-0.1, 0.1) * bw
            cy = (box[1] + box[3]) / 2 + rng.uniform(-0.1, 0.1) * bh
            bw, bh = bw * rng.uniform(0.9, 1.1), bh * rng.uniform(0.9, 1.1)
            x1, y1 = max(cx - bw / 2, 0.0), max(cy - bh / 2, 0.0)
            x2, y2 = min(cx + bw / 2, w), min(cy + bh / 2, h)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            xywh = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
            rows.append(f"{int(cls)} " + " ".join(f"{v:.6f}" for v in xywh))
        kept += len(rows)
        (labels / f"{path.stem}.txt").write_text("".join(r + "\n" for r in rows))
    print(f"{kept} boxes labelled")
    assert kept >= 20, f"only {kept} boxes labelled: the comparison would say little"
    data = {"path": str(root), "train": "images/test", "val": "images/test", "test": "images/test"}
    data["names"] = dict(enumerate(CLASSES))
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root


def test_evaluation_and_gates_report_one_map(export_run, relabelled_split, tmp_path, ultralytics_dir):
    from alumi_pipelines.lib.export.accuracy import VAL_NMS, detection_map, onnx_map
    from alumi_pipelines.lib.export.predict import predict_torch
    from alumi_pipelines.lib.export.yolo_data import read_yolo_split
    from alumi_pipelines.lib.training import evaluate_detector

    weights = export_run.root / "best.pt"
    onnx_path = export_run.lake.local_path(f"models/onnx/{export_run.version}/model.onnx")
    card = evaluate_detector(
        weights,
        relabelled_split / "data.yaml",
        tmp_path / "eval",
        config_dir=ultralytics_dir,
        imgsz=IMGSZ,
        batch=16,
        device="cpu",
        latency_images=1,
    )
    truths = read_yolo_split(relabelled_split, "test", len(CLASSES))
    assert len(truths) == len(SHAPES)
    gate_onnx = onnx_map(onnx_path, truths, config_dir=ultralytics_dir)
    torch_found = predict_torch(weights, [t.path for t in truths], config_dir=ultralytics_dir, imgsz=IMGSZ, **VAL_NMS)
    gate_torch = detection_map(torch_found, truths, config_dir=ultralytics_dir)
    numbers = {
        "evaluation": (card["map50"], card["map50_95"]),
        "gate onnx": (gate_onnx.map50, gate_onnx.map50_95),
        "gate torch": (gate_torch.map50, gate_torch.map50_95),
    }
    print(numbers)
    # the numbers are informative: far from 0 and 1 at the strict thresholds
    assert 0.3 < card["map50"] < 0.9 and 0.1 < card["map50_95"] < card["map50"] - 0.1
    assert gate_onnx.instances == gate_torch.instances == sum(len(t.class_ids) for t in truths)
    assert gate_onnx.map50 == pytest.approx(card["map50"], abs=ONNX_TOLERANCE)
    assert gate_onnx.map50_95 == pytest.approx(card["map50_95"], abs=ONNX_TOLERANCE)
    assert gate_torch.map50 == pytest.approx(card["map50"], abs=TORCH_TOLERANCE)
    assert gate_torch.map50_95 == pytest.approx(card["map50_95"], abs=TORCH_TOLERANCE)
