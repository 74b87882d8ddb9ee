"""Detections of a model on image files: the ONNX model through the edge runtime, the checkpoint through PyTorch.

The ONNX side goes through the edge package's own runtime (``alumi_edge``, CPU), so what is checked is
what devices run; the PyTorch side through ultralytics predict (its model, inference and NMS) on the same
letterboxed input, always offline (through :mod:`alumi_pipelines.lib.training`). Both letterbox as ultralytics
val does (``alumi_edge.processing.letterbox``). Both are imported inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alumi_pipelines.lib.export.onnx_export import ExportError
from alumi_pipelines.lib.export.yolo_data import read_bgr

NMS_IOU = 0.7
DEPLOY_CONF = 0.25  # default confidence threshold of the edge server
MAX_DET = 300


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image: xyxy boxes in original pixels, confidences, class ids."""

    boxes: np.ndarray
    confidences: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.confidences)


def predict_onnx(
    model_path: Path,
    images: Sequence[Path],
    *,
    conf: float,
    iou: float = NMS_IOU,
    max_det: int = MAX_DET,
    multi_label: bool = False,
    clip: bool = True,
) -> list[ImageDetections]:
    """Detections of the edge runtime (ONNX Runtime, CPU, the edge package's pre/post-processing); ``multi_label``
    keeps every class above ``conf`` per box and ``clip`` false leaves boxes unclipped, as ultralytics val does for
    mAP."""
    from alumi_edge.runtimes.onnx import OnnxRuntime

    runtime = OnnxRuntime(model_path, device="cpu").load()
    out = []
    for path in images:
        image = read_bgr(path)
        tensor, params = runtime.preprocess(image)
        found = runtime.postprocess(
            runtime.forward(tensor), params, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label, clip=clip
        )
        out.append(ImageDetections(found.boxes, found.confidences, found.class_ids))
    return out


def pick_sample_image(
    model_path: Path, images: Sequence[Path], *, conf: float = DEPLOY_CONF, iou: float = NMS_IOU
) -> tuple[Path, ImageDetections]:
    """The image with the most detections at ``conf`` (ties: first by path) and those detections."""
    if not images:
        raise ExportError("sample image: no candidate images")
    ordered = sorted(Path(p) for p in images)
    found = predict_onnx(model_path, ordered, conf=conf, iou=iou)
    best = max(range(len(ordered)), key=lambda i: (len(found[i]), -i))
    return ordered[best], found[best]


def predict_torch(
    weights: Path,
    images: Sequence[Path],
    *,
    config_dir: Path,
    imgsz: int,
    conf: float,
    iou: float = NMS_IOU,
    max_det: int = MAX_DET,
    multi_label: bool = False,
    clip: bool = True,
) -> list[ImageDetections]:
    """Detections of the PyTorch checkpoint through ultralytics predict (CPU, FP32) on the input the edge runtime
    makes (ultralytics val's square letterbox, ``alumi_edge.processing.letterbox``), boxes mapped back as the edge
    runtime maps them; with ``multi_label`` its NMS keeps every class above ``conf`` per box and with ``clip`` false
    boxes stay unclipped, as ultralytics val does for mAP."""
    from alumi_pipelines.lib.training.offline import import_ultralytics

    import_ultralytics(config_dir)
    import torch
    from ultralytics import YOLO
    from ultralytics.engine.results import Results
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import nms

    from alumi_edge.processing import letterbox, scale_to_original

    class ValInputPredictor(DetectionPredictor):
        """ultralytics predict on ultralytics val's letterbox, with val's NMS when ``multi_label``."""

        def pre_transform(self, im):
            placed = [letterbox(x, (imgsz, imgsz)) for x in im]
            self.placements = [params for _, params in placed]
            return [image for image, _ in placed]

        def postprocess(self, preds, img, orig_imgs, **kwargs):
            kept = nms.non_max_suppression(
                preds,
                self.args.conf,
                self.args.iou,
                multi_label=multi_label,
                max_det=self.args.max_det,
                end2end=getattr(self.model, "end2end", False),
            )
            results = []
            for pred, orig, path, params in zip(kept, orig_imgs, self.batch[0], self.placements):
                pred = pred[:, :6].cpu()
                pred[:, :4] = torch.from_numpy(scale_to_original(pred[:, :4].numpy(), params, clip=clip))
                results.append(Results(orig, path=path, names=self.model.names, boxes=pred))
            return results

    model = YOLO(str(weights))
    out = []
    for path in images:
        result = model.predict(
            read_bgr(path),
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            max_det=max_det,
            rect=False,
            device="cpu",
            half=False,
            verbose=False,
            save=False,
            predictor=ValInputPredictor,
        )[0]
        boxes = result.boxes
        out.append(
            ImageDetections(
                boxes.data[:, :4].cpu().numpy().astype(np.float32),
                boxes.conf.cpu().numpy().astype(np.float32),
                boxes.cls.cpu().numpy().astype(np.int64),
            )
        )
    return out
