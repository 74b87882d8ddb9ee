"""YOLO data of the export checks: images with their ground-truth boxes, and the choice of calibration images.

cv2 is imported inside the functions that read images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alumi_pipelines.lib.export.onnx_export import ExportError


@dataclass(frozen=True)
class LabelledImage:
    """An image file and its ground-truth boxes (xyxy in original pixels)."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32
    class_ids: np.ndarray  # (n,) int64


def read_bgr(path: Path) -> np.ndarray:
    """An image file as a BGR array (what cv2, ultralytics and the edge runtime take)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"{path}: not a readable image")
    return image


def read_labelled_image(image_path: Path, label_path: Path | None, num_classes: int) -> LabelledImage:
    """An image's size and its YOLO label file's boxes in pixels (no label file: a background image)."""
    height, width = read_bgr(image_path).shape[:2]
    rows: list[list[float]] = []
    if label_path is not None and Path(label_path).is_file():
        for lineno, line in enumerate(Path(label_path).read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                class_id, x, y, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
            except (ValueError, TypeError) as exc:
                raise ExportError(f"{label_path}:{lineno}: expected 'class x y w h', got {line!r}") from exc
            if len(parts) != 5 or not 0 <= class_id < num_classes:
                raise ExportError(f"{label_path}:{lineno}: expected 'class x y w h' with class in 0..{num_classes - 1}")
            rows.append(
                [class_id, (x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height]
            )
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return LabelledImage(Path(image_path), width, height, table[:, 1:].astype(np.float32), table[:, 0].astype(np.int64))


def read_yolo_split(root: Path, split: str, num_classes: int) -> list[LabelledImage]:
    """Every image of ``root/images/<split>`` with its label from ``root/labels/<split>``, sorted by path."""
    images_dir, labels_dir = Path(root) / "images" / split, Path(root) / "labels" / split
    suffixes = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in suffixes and not p.name.startswith("."))
    if not files:
        raise ExportError(f"split {split!r}: no images in {images_dir}")
    return [
        read_labelled_image(p, labels_dir / p.relative_to(images_dir).with_suffix(".txt"), num_classes) for p in files
    ]


def select_calibration_images(names: Iterable[str], limit: int) -> list[str]:
    """Up to ``limit`` names chosen deterministically (ordered by the sha256 of the name; no RNG state)."""
    if limit < 1:
        raise ExportError(f"calibration image limit {limit}: must be at least 1")
    unique = sorted(set(names))
    return sorted(unique, key=lambda n: hashlib.sha256(n.encode("utf-8")).hexdigest())[:limit]
