"""Accuracy of exported models: mAP50 against ground truth, box-by-box matching, PyTorch/ONNX parity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alumi_pipelines.lib.boxes import box_iou
from alumi_pipelines.lib.export.onnx_export import ExportError
from alumi_pipelines.lib.export.predict import DEPLOY_CONF, MAX_DET, ImageDetections, predict_onnx, predict_torch
from alumi_pipelines.lib.export.yolo_data import LabelledImage

EVAL_CONF = 0.001  # confidence threshold for mAP (as ultralytics val)
MAP_IOU = 0.5
MATCH_IOU = 0.9  # two runtimes' boxes are "the same box" at or above this IoU
SAME_BOX_PIXELS = 0.5  # boxes whose corners all agree this closely are the same box, whatever their area


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope at 101 recall points, as ultralytics val computes it (a perfect
    detector scores 0.995: the curve is closed with precision 0 at recall 1)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    points = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(points, mrec, mpre), points))


def map50(
    predictions: Sequence[ImageDetections],
    truths: Sequence[LabelledImage],
    num_classes: int,
    iou_threshold: float = MAP_IOU,
) -> tuple[float, dict[int, float]]:
    """mAP at IoU 0.5 over the classes that have ground truth, and AP per such class."""
    if len(predictions) != len(truths):
        raise ExportError(f"mAP: {len(predictions)} prediction sets for {len(truths)} images")
    per_class: dict[int, float] = {}
    for cls in range(num_classes):
        n_truth = sum(int((t.class_ids == cls).sum()) for t in truths)
        if n_truth == 0:
            continue
        scored: list[tuple[float, int]] = []  # (confidence, 1 if true positive)
        for pred, truth in zip(predictions, truths):
            p_mask, t_mask = pred.class_ids == cls, truth.class_ids == cls
            p_boxes, p_conf = pred.boxes[p_mask], pred.confidences[p_mask]
            t_boxes = truth.boxes[t_mask]
            order = np.argsort(-p_conf, kind="stable")
            used = np.zeros(len(t_boxes), dtype=bool)
            ious = box_iou(p_boxes, t_boxes) if len(t_boxes) else np.zeros((len(p_boxes), 0))
            for i in order:
                hit = 0
                if ious.shape[1]:
                    candidates = np.where(~used, ious[i], -1.0)
                    j = int(candidates.argmax())
                    if candidates[j] >= iou_threshold:
                        used[j] = True
                        hit = 1
                scored.append((float(p_conf[i]), hit))
        if not scored:
            per_class[cls] = 0.0
            continue
        scored.sort(key=lambda s: -s[0])
        hits = np.array([s[1] for s in scored], dtype=np.float64)
        tp = np.cumsum(hits)
        fp = np.cumsum(1.0 - hits)
        per_class[cls] = _average_precision(tp / n_truth, tp / (tp + fp))
    value = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return value, per_class


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
            "max_map50_diff": self.max_map50_diff,
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
    num_classes: int,
    box_conf: float = DEPLOY_CONF,
    max_map50_diff: float = 0.002,
    iou_min: float = MATCH_IOU,
) -> ParityReport:
    """PyTorch checkpoint vs ONNX on the same images: mAP50 of each and box-by-box agreement at ``box_conf``."""
    if not images:
        raise ExportError("parity: no images to compare on")
    paths = [im.path for im in images]
    torch_eval = predict_torch(weights, paths, config_dir=config_dir, imgsz=imgsz, conf=EVAL_CONF)
    onnx_eval = predict_onnx(onnx_path, paths, conf=EVAL_CONF)
    map_torch, _ = map50(torch_eval, images, num_classes)
    map_onnx, _ = map50(onnx_eval, images, num_classes)
    # NMS keeps the same boxes above box_conf whatever lower-scored candidates it also saw, unless the
    # max_det cut removed some: only then predict again at box_conf.
    reuse = box_conf >= EVAL_CONF and all(len(d) < MAX_DET for d in (*torch_eval, *onnx_eval))
    torch_dep = (
        [_above(d, box_conf) for d in torch_eval]
        if reuse
        else predict_torch(weights, paths, config_dir=config_dir, imgsz=imgsz, conf=box_conf)
    )
    onnx_dep = [_above(d, box_conf) for d in onnx_eval] if reuse else predict_onnx(onnx_path, paths, conf=box_conf)
    matches = [match_detections(t, o, p.name, iou_min) for t, o, p in zip(torch_dep, onnx_dep, paths)]
    return ParityReport(
        images=len(images),
        map50_torch=map_torch,
        map50_onnx=map_onnx,
        box_conf=box_conf,
        boxes_torch=sum(len(d) for d in torch_dep),
        boxes_onnx=sum(len(d) for d in onnx_dep),
        images_matching=sum(m.passed for m in matches),
        max_map50_diff=max_map50_diff,
        mismatches=[p for m in matches for p in m.problems],
    )


def _above(detections: ImageDetections, conf: float) -> ImageDetections:
    """The detections with confidence above ``conf``."""
    keep = detections.confidences > conf
    return ImageDetections(detections.boxes[keep], detections.confidences[keep], detections.class_ids[keep])
