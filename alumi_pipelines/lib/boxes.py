"""Box geometry shared by every stage: one IoU, for single boxes and for arrays of boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes; 0.0 when they do not overlap or both are empty."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou_cxcywh(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x_center, y_center, width, height)`` boxes (the canonical label layout).

    The union uses ``width * height`` as each box's area (not the area of its corners), so label IoUs
    match the ones the gold and corrections stages always computed, to the last bit.
    """
    ax1, ay1, ax2, ay2 = corners(a)
    bx1, by1, bx2, by2 = corners(b)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def corners(box: Sequence[float]) -> tuple[float, float, float, float]:
    """``(x_center, y_center, width, height)`` → ``(x1, y1, x2, y2)``."""
    xc, yc, w, h = box
    return xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (n, 4) × (m, 4) → (n, m)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
