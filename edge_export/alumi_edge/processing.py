"""Pre- and post-processing of YOLO detectors in numpy, numerically the same as ultralytics val.

Letterbox: the image as ultralytics val's data loader (``rect=False``) hands it to the model, pixel for pixel: its
long side resized to the input's long side (each side ``min(ceil(side * r), long side)``, bilinear), then, if it
does not fit, shrunk once more to fit (each side rounded), and padded with grey 114 centred. Decode: the ONNX output
``(1, 4 + nc, N)`` holds centre-x, centre-y, width, height in letterboxed pixels and one score per class; the best
class of each candidate is kept, candidates at or under the confidence threshold are dropped, class-wise NMS removes
overlaps, and boxes are mapped back to the original image (ultralytics' ``scale_boxes`` with the letterbox's gains
and padding, then clipped to the image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from alumi_edge.model_info import FLOAT_INPUT, INPUT_FORMATS, PIXEL_INPUT

PAD_VALUE = 114
# Offset per class id that separates the classes for class-wise NMS in one pass (as ultralytics).
CLASS_OFFSET = 7680.0
MAX_NMS_CANDIDATES = 30000


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the model input: resized size, per-axis gains and padding.

    ``loaded_width``/``loaded_height`` is the size after the first resize (long side to the input's long side, as
    ultralytics' ``BaseDataset.load_image``); ``resized_width``/``resized_height`` the size placed in the input
    (the same for a square input).
    """

    orig_height: int
    orig_width: int
    input_height: int
    input_width: int
    resized_width: int
    resized_height: int
    pad_left: int
    pad_top: int
    loaded_width: int = 0  # 0: the resized size
    loaded_height: int = 0

    @property
    def loaded_size(self) -> tuple[int, int]:
        """(width, height) after the first resize."""
        if self.loaded_width and self.loaded_height:
            return self.loaded_width, self.loaded_height
        return self.resized_width, self.resized_height

    @property
    def fit_ratio(self) -> float:
        """The second resize's ratio (1.0 unless the loaded image is larger than the input on one side)."""
        w, h = self.loaded_size
        return min(self.input_height / h, self.input_width / w, 1.0)

    @property
    def gain_x(self) -> float:
        return self.loaded_size[0] / self.orig_width * self.fit_ratio

    @property
    def gain_y(self) -> float:
        return self.loaded_size[1] / self.orig_height * self.fit_ratio


def letterbox_params(orig_hw: tuple[int, int], input_hw: tuple[int, int]) -> Letterbox:
    """Resize sizes and padding for an image of ``orig_hw`` in a model input of ``input_hw``.

    The rule of ultralytics val (``rect=False``): ``load_image`` resizes the long side to the input's long side,
    ``r = long / max(h, w)``, each side ``min(ceil(side * r), long)``; ``LetterBox(scaleup=False)`` then shrinks
    what does not fit (each side ``max(round(side * r2), 1)``) and pads ``round(d / 2 - 0.1)`` before.
    """
    h, w = int(orig_hw[0]), int(orig_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size {w}x{h}: both sides must be positive")
    ih, iw = int(input_hw[0]), int(input_hw[1])
    if ih <= 0 or iw <= 0:
        raise ValueError(f"model input size {iw}x{ih}: both sides must be positive")
    long_side = max(ih, iw)
    r = long_side / max(h, w)
    loaded_w, loaded_h = (min(math.ceil(w * r), long_side), min(math.ceil(h * r), long_side)) if r != 1 else (w, h)
    fit = min(ih / loaded_h, iw / loaded_w, 1.0)
    new_w, new_h = max(round(loaded_w * fit), 1), max(round(loaded_h * fit), 1)
    dw, dh = (iw - new_w) / 2, (ih - new_h) / 2
    return Letterbox(
        orig_height=h,
        orig_width=w,
        input_height=ih,
        input_width=iw,
        resized_width=new_w,
        resized_height=new_h,
        pad_left=round(dw - 0.1),
        pad_top=round(dh - 0.1),
        loaded_width=loaded_w,
        loaded_height=loaded_h,
    )


def letterbox(image: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """The image (H, W, 3 uint8) resized and padded to ``input_hw``, and the placement used."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image array of shape {image.shape}: expected (height, width, 3)")
    params = letterbox_params(image.shape[:2], input_hw)
    for size in (params.loaded_size, (params.resized_width, params.resized_height)):
        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    right = params.input_width - params.resized_width - params.pad_left
    bottom = params.input_height - params.resized_height - params.pad_top
    padded = cv2.copyMakeBorder(
        image, params.pad_top, bottom, params.pad_left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return padded, params


def to_input_tensor(letterboxed_bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR uint8 → (1, 3, H, W) RGB float32 in [0, 1], contiguous.

    Each colour plane is divided straight into its place in the output (no strided float copy first);
    division, not multiplication by 1/255, so the tensor is bit-identical to ultralytics'.
    """
    h, w = letterboxed_bgr.shape[:2]
    tensor = np.empty((1, 3, h, w), dtype=np.float32)
    for channel, plane in enumerate(reversed(cv2.split(letterboxed_bgr))):  # B, G, R planes → R, G, B
        np.divide(plane, np.float32(255.0), out=tensor[0, channel], dtype=np.float32)
    return tensor


def pack_pixels(letterboxed_bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) BGR uint8, even sides → (1, H/2, W/2, 12) uint8 (input format ``bgr_u8_s2d2``).

    Position (y, x) holds the 2×2 block of pixels at rows 2y, 2y+1 and columns 2x, 2x+1; channel
    ``(row parity * 2 + column parity) * 3 + c`` is BGR channel c of one of them. Values are copied, never
    scaled. One ``cv2.merge`` of the even and the odd rows, each seen as 6-channel pixel pairs.
    """
    if letterboxed_bgr.ndim != 3 or letterboxed_bgr.shape[2] != 3 or letterboxed_bgr.dtype != np.uint8:
        raise ValueError(
            f"image array of shape {letterboxed_bgr.shape} ({letterboxed_bgr.dtype}): expected (height, width, 3) uint8"
        )
    h, w = letterboxed_bgr.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"image of {w}x{h}: packing 2x2 blocks needs even sides")
    pairs = np.ascontiguousarray(letterboxed_bgr).reshape(h // 2, 2, w // 2, 6)
    return cv2.merge([pairs[:, 0], pairs[:, 1]])[None]


def to_model_input(letterboxed_bgr: np.ndarray, input_format: str = FLOAT_INPUT) -> np.ndarray:
    """The letterboxed image as the input tensor of a model with ``input_format``."""
    if input_format == FLOAT_INPUT:
        return to_input_tensor(letterboxed_bgr)
    if input_format == PIXEL_INPUT:
        return pack_pixels(letterboxed_bgr)
    raise ValueError(f"input format {input_format!r}: expected one of {', '.join(INPUT_FORMATS)}")


def preprocess(
    image_bgr: np.ndarray, input_hw: tuple[int, int], input_format: str = FLOAT_INPUT
) -> tuple[np.ndarray, Letterbox]:
    """Letterbox then convert to the model's input tensor."""
    padded, params = letterbox(image_bgr, input_hw)
    return to_model_input(padded, input_format), params


def iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes in Python floats; 0.0 when they do not overlap or both are empty.

    The scalar IoU of the package (matching detections to expected boxes); NMS keeps the float32
    :func:`box_iou_one_to_many`.
    """
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of ``boxes`` (float32, as torchvision computes it)."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of kept boxes, highest score first; a box is dropped when IoU > threshold."""
    boxes = np.asarray(boxes, dtype=np.float32)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    sorted_boxes = boxes[order]
    threshold = np.float32(iou_threshold)
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        keep.append(int(order[rank]))
        rest = rank + 1
        if rest >= len(order):
            break
        ious = box_iou_one_to_many(sorted_boxes[rank], sorted_boxes[rest:])
        suppressed[rest:] |= ious > threshold
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-wise NMS: boxes of different classes never suppress each other."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = class_ids.astype(np.float32)[:, None] * np.float32(CLASS_OFFSET)
    return nms(boxes.astype(np.float32) + offsets, scores, iou_threshold)


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """Centre/size boxes → corner boxes."""
    out = np.empty_like(xywh)
    half_w, half_h = xywh[:, 2] / 2, xywh[:, 3] / 2
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def scale_to_original(boxes_xyxy: np.ndarray, params: Letterbox, clip: bool = True) -> np.ndarray:
    """Boxes in model-input pixels → original-image pixels (ultralytics' ``scale_boxes`` with the letterbox's gains
    and padding), clipped to the image unless ``clip`` is false (ultralytics val matches unclipped boxes)."""
    out = boxes_xyxy.astype(np.float32, copy=True)
    out[:, [0, 2]] -= params.pad_left
    out[:, [1, 3]] -= params.pad_top
    out[:, [0, 2]] /= np.float32(params.gain_x)
    out[:, [1, 3]] /= np.float32(params.gain_y)
    if clip:
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, params.orig_width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, params.orig_height)
    return out


@dataclass(frozen=True)
class Detections:
    """Kept boxes of one image: xyxy in original pixels, confidences and class ids."""

    boxes: np.ndarray  # (n, 4) float32
    confidences: np.ndarray  # (n,) float32
    class_ids: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.confidences)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def postprocess(
    output: np.ndarray,
    params: Letterbox,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    max_det: int = 300,
    num_classes: int | None = None,
    end_to_end: bool = False,
    multi_label: bool = False,
    clip: bool = True,
) -> Detections:
    """Model output of one image → detections in original-image pixels.

    ``output`` is ``(1, 4 + nc, N)`` (YOLOv8/YOLO11) or, for end-to-end models, ``(1, N, 6)`` rows of
    x1, y1, x2, y2, confidence, class id that need no NMS. Each box keeps its best class (as ultralytics
    predict), or with ``multi_label`` every class scoring above the threshold (as ultralytics val, for mAP). Boxes are
    clipped to the image unless ``clip`` is false (ultralytics val matches boxes as the model drew them, even where
    they reach past the image: the mapping back keeps every IoU).
    """
    if not 0.0 <= conf_threshold <= 1.0:
        raise ValueError(f"conf threshold {conf_threshold}: must be between 0 and 1")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou threshold {iou_threshold}: must be between 0 and 1")
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 3:
        if pred.shape[0] != 1:
            raise ValueError(f"model output of shape {pred.shape}: expected a batch of one image")
        pred = pred[0]
    if pred.ndim != 2:
        raise ValueError(f"model output of shape {np.shape(output)}: expected (1, 4 + classes, boxes)")

    if end_to_end:
        if pred.shape[-1] != 6:
            raise ValueError(f"end-to-end model output of shape {np.shape(output)}: expected (1, boxes, 6)")
        keep = pred[:, 4] > conf_threshold
        rows = pred[keep][:max_det]
        boxes, confidences, class_ids = rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64)
    else:
        nc = num_classes if num_classes is not None else pred.shape[0] - 4
        if nc < 1 or pred.shape[0] < 4 + nc:
            raise ValueError(f"model output of shape {np.shape(output)}: fewer than 4 + {nc} rows")
        candidates = pred[:, pred[4 : 4 + nc].max(axis=0) > conf_threshold].T
        if len(candidates) == 0:
            return Detections.empty()
        class_scores = candidates[:, 4 : 4 + nc]
        if multi_label:  # one candidate per (box, class) above the threshold
            rows, class_ids = np.nonzero(class_scores > conf_threshold)
            boxes, confidences = xywh_to_xyxy(candidates[rows, :4]), class_scores[rows, class_ids]
        else:
            class_ids = class_scores.argmax(axis=1)
            confidences = class_scores[np.arange(len(class_ids)), class_ids]
            boxes = xywh_to_xyxy(candidates[:, :4])
            ok = confidences > conf_threshold
            boxes, confidences, class_ids = boxes[ok], confidences[ok], class_ids[ok]
        if len(confidences) > MAX_NMS_CANDIDATES:
            top = np.argsort(-confidences, kind="stable")[:MAX_NMS_CANDIDATES]
            boxes, confidences, class_ids = boxes[top], confidences[top], class_ids[top]
        kept = batched_nms(boxes, confidences, class_ids, iou_threshold)[:max_det]
        boxes, confidences, class_ids = boxes[kept], confidences[kept], class_ids[kept]
    if len(confidences) == 0:
        return Detections.empty()
    return Detections(
        boxes=scale_to_original(boxes, params, clip=clip),
        confidences=confidences.astype(np.float32),
        class_ids=class_ids.astype(np.int64),
    )
