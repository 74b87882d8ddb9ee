"""The one interface every runtime offers: load → preprocess → forward → postprocess."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from alumi_edge.model_info import ModelInfo, read_model_info
from alumi_edge.processing import PAD_VALUE, Detections, Letterbox, postprocess, preprocess, to_model_input


class RuntimeUnavailable(ImportError):
    """The runtime cannot run on this machine (missing package or device); the message says which."""


@dataclass(frozen=True)
class Box:
    """One detection in original-image pixels."""

    class_name: str
    class_id: int
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DetectionResult:
    """Detections of one image with the image size and the time each stage took."""

    boxes: list[Box]
    width: int
    height: int
    timing_ms: dict[str, float]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class Runtime(ABC):
    """A loaded detector. Subclasses implement ``load`` and ``forward``; the rest is shared numpy code."""

    name = "runtime"

    def __init__(self, model_path: str | Path, info: ModelInfo | None = None):
        self.model_path = Path(model_path)
        self.info = info if info is not None else read_model_info(self.model_path)

    @abstractmethod
    def load(self) -> Runtime:
        """Create the session/engine; returns self."""

    @abstractmethod
    def forward(self, tensor: np.ndarray) -> np.ndarray:
        """Run the network on its input tensor (as :meth:`preprocess` makes it) and return its raw output."""

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Letterbox an image and make it this model's input tensor (``info.input_format``)."""
        return preprocess(image_bgr, self.info.input_hw, self.info.input_format)

    def postprocess(
        self,
        output: np.ndarray,
        params: Letterbox,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        multi_label: bool = False,
        clip: bool = True,
    ) -> Detections:
        """Raw output → detections in original-image pixels (``multi_label``: every class above ``conf``; ``clip``
        false: boxes not clipped to the image, as ultralytics val matches them)."""
        return postprocess(
            output,
            params,
            conf_threshold=conf,
            iou_threshold=iou,
            max_det=max_det,
            num_classes=self.info.num_classes,
            end_to_end=self.info.end_to_end,
            multi_label=multi_label,
            clip=clip,
        )

    def to_boxes(self, detections: Detections) -> list[Box]:
        """Detections → Box records with class names."""
        names = self.info.names
        return [
            Box(
                class_name=names[int(c)] if 0 <= int(c) < len(names) else str(int(c)),
                class_id=int(c),
                confidence=float(s),
                x1=float(b[0]),
                y1=float(b[1]),
                x2=float(b[2]),
                y2=float(b[3]),
            )
            for b, s, c in zip(detections.boxes, detections.confidences, detections.class_ids)
        ]

    def detect(
        self, image_bgr: np.ndarray, conf: float = 0.25, iou: float = 0.7, max_det: int = 300
    ) -> DetectionResult:
        """Full pipeline on one BGR image, timed per stage."""
        start = time.perf_counter()
        tensor, params = self.preprocess(image_bgr)
        t_pre = _ms(start)
        mark = time.perf_counter()
        output = self.forward(tensor)
        t_fwd = _ms(mark)
        mark = time.perf_counter()
        detections = self.postprocess(output, params, conf=conf, iou=iou, max_det=max_det)
        boxes = self.to_boxes(detections)
        t_post = _ms(mark)
        return DetectionResult(
            boxes=boxes,
            width=int(image_bgr.shape[1]),
            height=int(image_bgr.shape[0]),
            timing_ms={"preprocess": t_pre, "inference": t_fwd, "postprocess": t_post, "total": _ms(start)},
        )

    def warmup(self, runs: int = 1) -> None:
        """Run the network on a grey input so the first real request does not pay for lazy setup."""
        h, w = self.info.input_hw
        tensor = to_model_input(np.full((h, w, 3), PAD_VALUE, dtype=np.uint8), self.info.input_format)
        for _ in range(runs):
            self.forward(tensor)

    def close(self) -> None:  # noqa: B027 - optional hook: runtimes without resources to free keep it empty
        """Release the session/engine (optional)."""

    def describe(self) -> dict:
        """Name, model path and model facts for /v1/model and logs."""
        return {
            "runtime": self.name,
            "model_path": str(self.model_path),
            "classes": list(self.info.names),
            "imgsz": list(self.info.input_hw),
            "stride": self.info.stride,
            "model_version": self.info.model_version,
            "dataset_hash": self.info.dataset_hash,
        }
