"""Accuracy of exported models: mAP against ground truth, box-by-box matching, PyTorch/ONNX parity.

mAP is ultralytics' own: its validator's matching (``box_iou`` and ``match_predictions`` over IoU 0.50:0.95,
through ``DetectionValidator``) and ``ultralytics.utils.metrics.ap_per_class``, on predictions made with the
validator's settings (:data:`VAL_NMS`) on the input its data loader makes (``rect=False``: the edge runtime's letterbox
is that one, pixel for pixel), so a gate measures what ``detector_evaluation`` reports for the same model. ultralytics
is imported inside :func:`detection_map` (offline, through :mod:`alumi_pipelines.lib.training`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alumi_pipelines.lib.boxes import box_iou
from alumi_pipelines.lib.export.onnx_export import ExportError
from alumi_pipelines.lib.export.predict import DEPLOY_CONF, ImageDetections, predict_onnx, predict_torch
from alumi_pipelines.lib.export.yolo_data import LabelledImage

EVAL_CONF = 0.001  # confidence threshold of ultralytics val
# The predictions of ultralytics val's mAP: NMS at conf 0.001, IoU 0.7, at most 300 boxes, every class above conf per
# box; boxes not clipped to the image (val matches them in the letterboxed input, where a box may reach into the
# padding; mapped back unclipped, every IoU stays the same).
VAL_NMS = {"conf": EVAL_CONF, "iou": 0.7, "max_det": 300, "multi_label": True, "clip": False}
MAP_METHOD = "ultralytics val: DetectionValidator matching (box_iou, IoU 0.50:0.95) + metrics.ap_per_class"
MATCH_IOU = 0.9  # two runtimes' boxes are "the same box" at or above this IoU
SAME_BOX_PIXELS = 0.5  # boxes whose corners all agree this closely are the same box, whatever their area


@dataclass(frozen=True)
class MapResult:
    """mAP at IoU 0.5 and over 0.50:0.95, averaged over the classes that have ground truth, and AP50 per class."""

    map50: float
    map50_95: float
    per_class50: dict[int, float]
    images: int
    instances: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "map50": round(self.map50, 6),
            "map50_95": round(self.map50_95, 6),
            "ap50_per_class": {str(k): round(v, 6) for k, v in self.per_class50.items()},
            "images": self.images,
            "instances": self.instances,
        }


def detection_map(
    predictions: Sequence[ImageDetections], truths: Sequence[LabelledImage], *, config_dir: Path
) -> MapResult:
    """mAP50 and mAP50-95 as ultralytics val computes them, from detections and ground truth in the same
    (original-image) pixels: its validator's ``_process_batch`` per image, then ``ap_per_class``."""
    if len(predictions) != len(truths):
        raise ExportError(f"mAP: {len(predictions)} prediction sets for {len(truths)} images")
    from alumi_pipelines.lib.training.offline import import_ultralytics

    import_ultralytics(config_dir)
    import torch
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class

    stats: dict[str, list[np.ndarray]] = {"tp": [], "conf": [], "pred_cls": [], "target_cls": []}
    with tempfile.TemporaryDirectory(prefix="alumi-map-") as tmp:
        validator = DetectionValidator(save_dir=Path(tmp), args={"conf": EVAL_CONF, "iou": VAL_NMS["iou"]})
        for pred, truth in zip(predictions, truths):
            order = np.argsort(-pred.confidences, kind="stable")  # the matching walks by descending confidence
            boxes, conf, cls = pred.boxes[order], pred.confidences[order], pred.class_ids[order]
            matched = validator._process_batch(
                {"bboxes": torch.as_tensor(boxes, dtype=torch.float32), "cls": torch.as_tensor(cls)},
                {"bboxes": torch.as_tensor(truth.boxes, dtype=torch.float32), "cls": torch.as_tensor(truth.class_ids)},
            )
            stats["tp"].append(matched["tp"])
            stats["conf"].append(conf.astype(np.float64))
            stats["pred_cls"].append(cls.astype(np.float64))
            stats["target_cls"].append(truth.class_ids.astype(np.float64))
    joined = {k: np.concatenate(v, 0) for k, v in stats.items()}
    instances = len(joined["target_cls"])
    if instances == 0:
        return MapResult(0.0, 0.0, {}, len(truths), 0)
    results = ap_per_class(joined["tp"], joined["conf"], joined["pred_cls"], joined["target_cls"])
    ap, classes = results[5], results[6]  # (classes, 10 IoU thresholds), the classes with ground truth
    return MapResult(
        map50=float(ap[:, 0].mean()),
        map50_95=float(ap.mean()),
        per_class50={int(c): float(a) for c, a in zip(classes, ap[:, 0])},
        images=len(truths),
        instances=instances,
    )


def int8_verdict(fp32: MapResult, int8: MapResult, margin: float) -> dict[str, Any]:
    """Whether the INT8 model ships: refused when its mAP50 is more than ``margin`` below the FP32 model's."""
    drop = fp32.map50 - int8.map50
    accepted = drop <= margin
    why = (
        f"mAP50 FP32 {fp32.map50:.4f} vs INT8 {int8.map50:.4f}: drop {drop:+.4f} "
        + ("within the margin" if accepted else "exceeds the margin")
        + f" {margin}"
    )
    return {
        "accepted": accepted,
        "margin": margin,
        "map50_fp32": round(fp32.map50, 6),
        "map50_int8": round(int8.map50, 6),
        "map50_drop": round(drop, 6),
        "why": why,
    }


def onnx_map(model_path: Path, images: Sequence[LabelledImage], *, config_dir: Path) -> MapResult:
    """mAP of an ONNX model through the edge runtime with ultralytics val's NMS settings (:data:`VAL_NMS`)."""
    found = predict_onnx(model_path, [im.path for im in images], **VAL_NMS)
    return detection_map(found, images, config_dir=config_dir)


@dataclass
class ImageMatch:
    image: str
    reference: int
    candidate: int
    matched: int
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def match_detections(
    reference: ImageDetections, candidate: ImageDetections, image: str = "", iou_min: float = MATCH_IOU
) -> ImageMatch:
    """Greedy one-to-one matching (highest confidence first, same class, best IoU ≥ ``iou_min``).

    Boxes whose corners agree within :data:`SAME_BOX_PIXELS` count as IoU 1 (a box clipped to the image
    border can have no area, and then no IoU).
    """
    report = ImageMatch(image, len(reference), len(candidate), 0)
    if len(reference) != len(candidate):
        report.problems.append(f"{image}: {len(reference)} reference boxes but {len(candidate)} candidate boxes")
    free = np.ones(len(candidate), dtype=bool)
    ious = box_iou(reference.boxes, candidate.boxes)
    if ious.size:
        # Boxes clipped to a line at the image border have no area: equal corners are the same box.
        corner_gap = np.abs(reference.boxes[:, None, :] - candidate.boxes[None, :, :]).max(axis=2)
        ious = np.where(corner_gap <= SAME_BOX_PIXELS, 1.0, ious)
    for i in np.argsort(-reference.confidences, kind="stable"):
        options = np.where(free & (candidate.class_ids == reference.class_ids[i]), ious[i] if ious.size else 0.0, -1.0)
        j = int(options.argmax()) if len(options) else -1
        if j >= 0 and options[j] >= iou_min:
            free[j] = False
            report.matched += 1
        else:
            best = float(options[j]) if j >= 0 else 0.0
            b = reference.boxes[i]
            report.problems.append(
                f"{image}: class {int(reference.class_ids[i])} box ({b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f}) "
                f"conf {float(reference.confidences[i]):.3f} has no match (best IoU {max(best, 0.0):.3f} < {iou_min})"
            )
    for j in np.flatnonzero(free):
        b = candidate.boxes[j]
        report.problems.append(
            f"{image}: extra candidate class {int(candidate.class_ids[j])} box "
            f"({b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f})"
        )
    return report


@dataclass
class ParityReport:
    images: int
    map50_torch: float
    map50_onnx: float
    box_conf: float
    boxes_torch: int
    boxes_onnx: int
    images_matching: int
    max_map50_diff: float
    map50_95_torch: float = 0.0
    map50_95_onnx: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    @property
    def map50_diff(self) -> float:
        return abs(self.map50_torch - self.map50_onnx)

    @property
    def passed(self) -> bool:
        return self.map50_diff <= self.max_map50_diff and self.images_matching == self.images

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "map50_torch": round(self.map50_torch, 6),
            "map50_onnx": round(self.map50_onnx, 6),
            "map50_diff": round(self.map50_diff, 6),
            "map50_95_torch": round(self.map50_95_torch, 6),
            "map50_95_onnx": round(self.map50_95_onnx, 6),
            "max_map50_diff": self.max_map50_diff,
            "map_nms": dict(VAL_NMS),
            "box_conf": self.box_conf,
            "boxes_torch": self.boxes_torch,
            "boxes_onnx": self.boxes_onnx,
            "images_matching": self.images_matching,
            "passed": self.passed,
            "mismatches": self.mismatches[:50],
        }


def parity(
    weights: Path,
    onnx_path: Path,
    images: Sequence[LabelledImage],
    *,
    config_dir: Path,
    imgsz: int,
    box_conf: float = DEPLOY_CONF,
    max_map50_diff: float = 0.002,
    iou_min: float = MATCH_IOU,
) -> ParityReport:
    """PyTorch checkpoint vs ONNX on the same images: the mAP of each (:func:`detection_map` on detections made
    with ultralytics val's NMS, :data:`VAL_NMS`) and box-by-box agreement of the deployed detections at
    ``box_conf`` (one class per box, as the edge server answers)."""
    if not images:
        raise ExportError("parity: no images to compare on")
    paths = [im.path for im in images]
    torch_eval = predict_torch(weights, paths, config_dir=config_dir, imgsz=imgsz, **VAL_NMS)
    map_torch = detection_map(torch_eval, images, config_dir=config_dir)
    map_onnx = onnx_map(onnx_path, images, config_dir=config_dir)
    torch_dep = predict_torch(weights, paths, config_dir=config_dir, imgsz=imgsz, conf=box_conf)
    onnx_dep = predict_onnx(onnx_path, paths, conf=box_conf)
    matches = [match_detections(t, o, p.name, iou_min) for t, o, p in zip(torch_dep, onnx_dep, paths)]
    return ParityReport(
        images=len(images),
        map50_torch=map_torch.map50,
        map50_onnx=map_onnx.map50,
        box_conf=box_conf,
        boxes_torch=sum(len(d) for d in torch_dep),
        boxes_onnx=sum(len(d) for d in onnx_dep),
        images_matching=sum(m.passed for m in matches),
        max_map50_diff=max_map50_diff,
        map50_95_torch=map_torch.map50_95,
        map50_95_onnx=map_onnx.map50_95,
        mismatches=[p for m in matches for p in m.problems],
    )
