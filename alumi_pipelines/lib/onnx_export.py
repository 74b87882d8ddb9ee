"""ONNX export of YOLO detectors, PyTorch/ONNX parity, INT8 static quantisation and CPU latency.

Pure logic over local paths: nothing here imports dagster or touches the lake. ultralytics, torch,
onnx and onnxruntime are imported inside the functions that use them; ultralytics always offline
(through :mod:`alumi_pipelines.lib.training`). Detections on the ONNX side go through the edge
package's own runtime (``alumi_edge``), so what is checked here is what devices run.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from alumi_pipelines.lib import int8_graph
from alumi_pipelines.lib.onnx_graph import graph_index, node_attr

OPSET = 17
EVAL_CONF = 0.001  # confidence threshold for mAP (as ultralytics val)
NMS_IOU = 0.7
DEPLOY_CONF = 0.25  # default confidence threshold of the edge server
MAX_DET = 300
MATCH_IOU = 0.9  # two runtimes' boxes are "the same box" at or above this IoU
MAP_IOU = 0.5
SAME_BOX_PIXELS = 0.5  # boxes whose corners all agree this closely are the same box, whatever their area
PIPELINE_METADATA_KEYS = ("model_version", "dataset_hash", "mlflow_run_id")
ACTIVATION_TYPES = ("QUInt8", "QInt8")

# Ops the Detect head uses to turn feature maps into boxes and scores: distribution focal loss
# (Reshape/Transpose/Softmax/Conv as exported, ReduceMax/Exp/MatMul once rewritten), anchor arithmetic
# and the class sigmoid. Quantising these
# to 8 bits wrecks the pixel coordinates, so they stay in float.
HEAD_DECODE_OPS = frozenset(
    {"Concat", "Sigmoid", "Mul", "Add", "Sub", "Div", "Reshape", "Slice", "Split", "Softmax", "Transpose",
     "Unsqueeze", "Squeeze", "Gather", "Shape", "Constant", "Cast", "Flatten", "ReduceMax", "Exp"}
)


class ExportError(ValueError):
    """An export, quantisation or comparison that cannot be done; the message names the file or field."""


# -- images and labels ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledImage:
    """An image file and its ground-truth boxes (xyxy in original pixels)."""

    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32
    class_ids: np.ndarray  # (n,) int64


def read_labelled_image(image_path: Path, label_path: Path | None, num_classes: int) -> LabelledImage:
    """An image's size and its YOLO label file's boxes in pixels (no label file: a background image)."""
    import cv2

    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"{image_path}: not a readable image")
    height, width = image.shape[:2]
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
            rows.append([class_id, (x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height])
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return LabelledImage(Path(image_path), width, height, table[:, 1:].astype(np.float32), table[:, 0].astype(np.int64))


def read_yolo_split(root: Path, split: str, num_classes: int) -> list[LabelledImage]:
    """Every image of ``root/images/<split>`` with its label from ``root/labels/<split>``, sorted by path."""
    images_dir, labels_dir = Path(root) / "images" / split, Path(root) / "labels" / split
    suffixes = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in suffixes and not p.name.startswith("."))
    if not files:
        raise ExportError(f"split {split!r}: no images in {images_dir}")
    return [read_labelled_image(p, labels_dir / p.relative_to(images_dir).with_suffix(".txt"), num_classes)
            for p in files]


def select_calibration_images(names: Iterable[str], limit: int) -> list[str]:
    """Up to ``limit`` names chosen deterministically (ordered by the sha256 of the name; no RNG state)."""
    if limit < 1:
        raise ExportError(f"calibration image limit {limit}: must be at least 1")
    unique = sorted(set(names))
    return sorted(unique, key=lambda n: hashlib.sha256(n.encode("utf-8")).hexdigest())[:limit]


# -- export --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    path: Path
    imgsz: int
    opset: int
    simplified: bool
    metadata: dict[str, str]
    names: list[str]
    sha256: str
    size_bytes: int
    simplify_error: str = ""
    dfl_rewritten: bool = False  # the head's DFL decoding was rewritten without a transpose (rewrite_dfl)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_imgsz(weights: Path, config_dir: Path) -> int:
    """The image size a YOLO checkpoint was trained at (its ``train_args``)."""
    from alumi_pipelines.lib.training import _offline_ultralytics

    _offline_ultralytics(config_dir)
    from ultralytics import YOLO

    args = (YOLO(str(weights)).ckpt or {}).get("train_args") or {}
    imgsz = args.get("imgsz")
    if isinstance(imgsz, (list, tuple)):
        imgsz = max(imgsz)
    if not isinstance(imgsz, int) or imgsz <= 0:
        raise ExportError(f"{weights}: checkpoint records no training image size; pass imgsz explicitly")
    return imgsz


def set_metadata(path: str | Path, props: Mapping[str, Any]) -> dict[str, str]:
    """Add or replace ``metadata_props`` of an ONNX file in place (atomically); returns all properties."""
    import onnx

    return save_with_metadata(onnx.load(str(path)), path, props)


def save_with_metadata(model, path: str | Path, props: Mapping[str, Any]) -> dict[str, str]:
    """Add or replace ``props`` in the ``metadata_props`` of ``model`` (an ``onnx.ModelProto``) and save it
    to ``path`` atomically (a temporary file, then a rename); returns all properties."""
    import onnx

    path = Path(path)
    current = {p.key: p.value for p in model.metadata_props}
    current.update({str(k): str(v) for k, v in props.items()})
    del model.metadata_props[:]
    for key, value in current.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    tmp = path.with_name(f".tmp-{path.name}")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return current


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def export_onnx(
    weights: Path,
    out_dir: Path,
    *,
    config_dir: Path,
    imgsz: int,
    metadata: Mapping[str, Any],
    opset: int = OPSET,
    simplify: bool = True,
) -> ExportResult:
    """Export a YOLO checkpoint to ``out_dir/model.onnx`` (static 1×3×imgsz×imgsz, FP32) with pipeline metadata.

    ultralytics writes ``names``, ``imgsz`` and ``stride``; ``metadata`` adds e.g. model_version,
    dataset_hash and mlflow_run_id. onnxslim simplification is tried first; when it fails the plain
    export is kept and the error reported.
    """
    from alumi_pipelines.lib.training import _offline_ultralytics

    missing = [k for k in PIPELINE_METADATA_KEYS if not str(metadata.get(k, "") or "")]
    if missing:
        raise ExportError(f"export metadata: {', '.join(missing)} must be given")
    if imgsz <= 0 or imgsz % 32:
        raise ExportError(f"export imgsz {imgsz}: must be a positive multiple of 32")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # ultralytics writes the ONNX beside the weights: work on a copy inside out_dir.
    staged = out_dir / "model.pt"
    if Path(weights).resolve() != staged:
        shutil.copyfile(weights, staged)
    _offline_ultralytics(config_dir)
    from ultralytics import YOLO

    def run(simplify_now: bool) -> Path:
        model = YOLO(str(staged))
        produced = model.export(format="onnx", imgsz=imgsz, opset=opset, dynamic=False, simplify=simplify_now,
                                half=False, nms=False, device="cpu", verbose=False)
        return Path(produced)

    simplify_error = ""
    simplified = simplify
    try:
        produced = run(simplify)
    except Exception as exc:  # onnxslim missing or failing on this graph: keep the plain export
        if not simplify:
            raise
        simplify_error = f"{type(exc).__name__}: {exc}"
        simplified = False
        produced = run(False)
    target = out_dir / "model.onnx"
    if produced.resolve() != target:
        produced.replace(target)
    import onnx

    model = onnx.load(str(target))
    dfl_rewritten = rewrite_dfl(model)
    props = save_with_metadata(model, target, {k: metadata[k] for k in metadata})
    onnx.checker.check_model(str(target))
    from alumi_edge.model_info import parse_model_info

    info = parse_model_info(props, source=str(target))
    if info.input_hw != (imgsz, imgsz):
        raise ExportError(f"{target}: metadata imgsz {info.input_hw} differs from the requested {imgsz}")
    return ExportResult(path=target, imgsz=imgsz, opset=opset, simplified=simplified, metadata=props,
                        names=list(info.names), sha256=file_sha256(target), size_bytes=target.stat().st_size,
                        simplify_error=simplify_error, dfl_rewritten=dfl_rewritten)


def rewrite_dfl(model) -> bool:
    """Rewrite the Detect head's DFL decoding without a transpose; True when it was rewritten.

    ultralytics exports the distribution focal loss decoding as ``Reshape(b, 4, 16, a) → Transpose(0, 2,
    1, 3) → Softmax(axis=1) → 1×1 Conv`` (the conv's weights are the bin values 0..15): the expected bin
    under a softmax over the 16 bins. ONNX Runtime runs that softmax through an internal transpose on one
    thread (about 3 ms at 640 px here), and a softmax over the last axis still needs an explicit
    transpose (0.6 ms). The same arithmetic without moving any data::

        m = ReduceMax(x, axis=2); e = Exp(x - m)
        s = MatMul([bins; ones], e)          # (b, 4, 2, a): Σ e·bin and Σ e per box side and anchor
        out = s[:, :, 0:1] / s[:, :, 1:2]    # (b, 4, 1, a): the conv's output elements, in the same order

    The max is subtracted as a softmax does, so large logits cannot overflow. ``model`` (an
    ``onnx.ModelProto``) is edited in place; a graph without this pattern is left as it is.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    producer, consumers, initializers = graph_index(graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    attr = node_attr

    rewritten = False
    for softmax in [n for n in graph.node if n.op_type == "Softmax" and attr(n, "axis") == 1]:
        transpose = producer.get(softmax.input[0])
        convs = consumers.get(softmax.output[0], [])
        if transpose is None or transpose.op_type != "Transpose" or list(attr(transpose, "perm", [])) != [0, 2, 1, 3]:
            continue
        if len(consumers.get(transpose.output[0], [])) != 1 or len(convs) != 1 or convs[0].op_type != "Conv":
            continue
        conv = convs[0]
        weight = initializers.get(conv.input[1])
        if len(conv.input) != 2 or weight is None or attr(conv, "group", 1) != 1:
            continue
        bins = numpy_helper.to_array(weight)
        if bins.ndim != 4 or bins.shape[0] != 1 or bins.shape[2:] != (1, 1):
            continue
        prefix = softmax.name.rsplit("/", 1)[0] if "/" in softmax.name else softmax.name
        name = lambda part: f"{prefix}/{part}"  # noqa: E731
        row = bins.reshape(1, -1).astype(np.float32)
        graph.initializer.extend([
            numpy_helper.from_array(np.concatenate([row, np.ones_like(row)]), name("bins_and_ones")),
            numpy_helper.from_array(np.array([2], np.int64), name("bin_axis")),
            numpy_helper.from_array(np.array([0], np.int64), name("at_0")),
            numpy_helper.from_array(np.array([1], np.int64), name("at_1")),
            numpy_helper.from_array(np.array([2], np.int64), name("at_2")),
        ])
        x = transpose.input[0]
        reduce_max = (helper.make_node("ReduceMax", [x, name("bin_axis")], [name("max")], keepdims=1,
                                       name=name("ReduceMax")) if opset >= 18 else
                      helper.make_node("ReduceMax", [x], [name("max")], axes=[2], keepdims=1, name=name("ReduceMax")))
        replacement = [
            reduce_max,
            helper.make_node("Sub", [x, name("max")], [name("shifted")], name=name("Sub")),
            helper.make_node("Exp", [name("shifted")], [name("exp")], name=name("Exp")),
            helper.make_node("MatMul", [name("bins_and_ones"), name("exp")], [name("sums")], name=name("MatMul")),
            helper.make_node("Slice", [name("sums"), name("at_0"), name("at_1"), name("bin_axis")], [name("weighted")],
                             name=name("SliceWeighted")),
            helper.make_node("Slice", [name("sums"), name("at_1"), name("at_2"), name("bin_axis")], [name("total")],
                             name=name("SliceTotal")),
            helper.make_node("Div", [name("weighted"), name("total")], [conv.output[0]], name=name("Div")),
        ]
        old = {id(transpose), id(softmax), id(conv)}
        nodes = []
        for node in graph.node:
            if id(node) == id(transpose):
                nodes.extend(replacement)
            elif id(node) not in old:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        changed = {transpose.output[0], softmax.output[0], conv.output[0]}
        for info in [v for v in graph.value_info if v.name in changed]:  # their shapes changed
            graph.value_info.remove(info)
        if not any(weight.name in n.input for n in graph.node):
            graph.initializer.remove(weight)
        rewritten = True
    return rewritten


# -- predictions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image: xyxy boxes in original pixels, confidences, class ids."""

    boxes: np.ndarray
    confidences: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.confidences)


def _read_bgr(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"{path}: not a readable image")
    return image


def predict_onnx(model_path: Path, images: Sequence[Path], *, conf: float, iou: float = NMS_IOU,
                 max_det: int = MAX_DET) -> list[ImageDetections]:
    """Detections of the edge runtime (ONNX Runtime, CPU, the edge package's pre/post-processing)."""
    from alumi_edge.runtimes.onnx import OnnxRuntime

    runtime = OnnxRuntime(model_path, device="cpu").load()
    out = []
    for path in images:
        image = _read_bgr(path)
        tensor, params = runtime.preprocess(image)
        found = runtime.postprocess(runtime.forward(tensor), params, conf=conf, iou=iou, max_det=max_det)
        out.append(ImageDetections(found.boxes, found.confidences, found.class_ids))
    return out


def pick_sample_image(model_path: Path, images: Sequence[Path], *, conf: float = DEPLOY_CONF,
                      iou: float = NMS_IOU) -> tuple[Path, ImageDetections]:
    """The image with the most detections at ``conf`` (ties: first by path) and those detections."""
    if not images:
        raise ExportError("sample image: no candidate images")
    ordered = sorted(Path(p) for p in images)
    found = predict_onnx(model_path, ordered, conf=conf, iou=iou)
    best = max(range(len(ordered)), key=lambda i: (len(found[i]), -i))
    return ordered[best], found[best]


def predict_torch(weights: Path, images: Sequence[Path], *, config_dir: Path, imgsz: int, conf: float,
                  iou: float = NMS_IOU, max_det: int = MAX_DET) -> list[ImageDetections]:
    """Detections of the PyTorch checkpoint through ultralytics predict (square letterbox, CPU, FP32)."""
    from alumi_pipelines.lib.training import _offline_ultralytics

    _offline_ultralytics(config_dir)
    from ultralytics import YOLO

    model = YOLO(str(weights))
    out = []
    for path in images:
        result = model.predict(_read_bgr(path), imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, rect=False,
                               device="cpu", half=False, verbose=False, save=False)[0]
        boxes = result.boxes
        out.append(ImageDetections(boxes.xyxy.cpu().numpy().astype(np.float32),
                                   boxes.conf.cpu().numpy().astype(np.float32),
                                   boxes.cls.cpu().numpy().astype(np.int64)))
    return out


# -- metrics and comparison ----------------------------------------------------------------------
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


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope at 101 recall points, as ultralytics val computes it (a perfect
    detector scores 0.995: the curve is closed with precision 0 at recall 1)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    points = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(points, mrec, mpre), points))


def map50(predictions: Sequence[ImageDetections], truths: Sequence[LabelledImage], num_classes: int,
          iou_threshold: float = MAP_IOU) -> tuple[float, dict[int, float]]:
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


def match_detections(reference: ImageDetections, candidate: ImageDetections, image: str = "",
                     iou_min: float = MATCH_IOU) -> ImageMatch:
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
        report.problems.append(f"{image}: extra candidate class {int(candidate.class_ids[j])} box "
                               f"({b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f})")
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
        return {"images": self.images, "map50_torch": round(self.map50_torch, 6), "map50_onnx": round(self.map50_onnx, 6),
                "map50_diff": round(self.map50_diff, 6), "max_map50_diff": self.max_map50_diff,
                "box_conf": self.box_conf, "boxes_torch": self.boxes_torch, "boxes_onnx": self.boxes_onnx,
                "images_matching": self.images_matching, "passed": self.passed, "mismatches": self.mismatches[:50]}


def parity(weights: Path, onnx_path: Path, images: Sequence[LabelledImage], *, config_dir: Path, imgsz: int,
           num_classes: int, box_conf: float = DEPLOY_CONF, max_map50_diff: float = 0.002,
           iou_min: float = MATCH_IOU) -> ParityReport:
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
    torch_dep = [_above(d, box_conf) for d in torch_eval] if reuse else \
        predict_torch(weights, paths, config_dir=config_dir, imgsz=imgsz, conf=box_conf)
    onnx_dep = [_above(d, box_conf) for d in onnx_eval] if reuse else predict_onnx(onnx_path, paths, conf=box_conf)
    matches = [match_detections(t, o, p.name, iou_min) for t, o, p in zip(torch_dep, onnx_dep, paths)]
    return ParityReport(
        images=len(images), map50_torch=map_torch, map50_onnx=map_onnx, box_conf=box_conf,
        boxes_torch=sum(len(d) for d in torch_dep), boxes_onnx=sum(len(d) for d in onnx_dep),
        images_matching=sum(m.passed for m in matches), max_map50_diff=max_map50_diff,
        mismatches=[p for m in matches for p in m.problems],
    )


def _above(detections: ImageDetections, conf: float) -> ImageDetections:
    """The detections with confidence above ``conf``."""
    keep = detections.confidences > conf
    return ImageDetections(detections.boxes[keep], detections.confidences[keep], detections.class_ids[keep])


# -- INT8 quantisation ---------------------------------------------------------------------------
def head_decode_nodes(model) -> list[str]:
    """Names of the Detect head's box-decoding nodes, found by walking back from the graph outputs.

    The walk follows producers through :data:`HEAD_DECODE_OPS` and the DFL's bin-weighted sum (a Conv
    fed by a Softmax, or a MatMul of an Exp after :func:`rewrite_dfl`) and stops at every other node —
    the head's last feature convolutions are where it ends,
    so those and everything before them stay quantisable. ``model`` is an ``onnx.ModelProto`` or a path.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    producer = {out: node for node in model.graph.node for out in node.output}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"  # quantize_static addresses nodes by name

    def is_dfl_conv(node) -> bool:  # the bin-weighted sum: a Conv after a Softmax as exported, a MatMul of Exp
        if node.op_type not in ("Conv", "MatMul"):
            return False
        sources = [producer[i] for i in node.input if i in producer]
        return any(s.op_type in ("Softmax", "Exp") for s in sources)

    found: dict[str, None] = {}
    stack = [producer[o.name] for o in model.graph.output if o.name in producer]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type not in HEAD_DECODE_OPS and not is_dfl_conv(node):
            continue
        found[node.name] = None
        stack.extend(producer[i] for i in node.input if i in producer)
    if not any(producer[o.name].op_type in HEAD_DECODE_OPS for o in model.graph.output if o.name in producer):
        raise ExportError("head decode nodes: the graph output is not produced by a box-decoding op "
                          "(not a YOLO Detect head?)")
    order = {node.name: i for i, node in enumerate(model.graph.node)}
    return sorted(found, key=lambda n: order.get(n, 0))


@dataclass(frozen=True)
class QuantizationResult:
    path: Path
    excluded_nodes: list[str]
    calibration_images: int
    activation_type: str
    per_channel: bool
    size_bytes: int
    preprocessed: bool
    float_nodes: list[str] = field(default_factory=list)  # attention cores and upsampling kept in float
    shared_concat_scales: int = 0  # Concats whose inputs now share the output's scale
    input_format: str = int8_graph.FLOAT_FORMAT  # int8_graph.PIXEL_FORMAT when it takes packed uint8 pixels


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration_images: Sequence[Path],
    *,
    per_channel: bool = True,
    activation_type: str = "QUInt8",
    exclude_head: bool = True,
    op_types: Sequence[str] | None = None,
    float_ops: bool = True,
    share_concat_scales: bool = True,
    pixel_input: bool = True,
) -> QuantizationResult:
    """Static QDQ quantisation with ONNX Runtime (QInt8 weights, per channel), calibrated on images.

    The model is first shape-inferred and optimised (``quant_pre_process``); the Detect head's
    box-decoding nodes stay in float (:func:`head_decode_nodes`), and with ``float_ops`` so do the
    attention cores and the upsampling, which ONNX Runtime runs faster in float. ``op_types`` limits
    quantisation to those op types (default: every type ONNX Runtime quantises). QUInt8 activations: on
    x86 CPUs without VNNI, QInt8 activations ran about 2.4× slower than QUInt8 here. The quantised graph
    then gets the CPU rewrites of :mod:`alumi_pipelines.lib.int8_graph` that are switched on: one scale per Concat, and (QUInt8 only)
    packed uint8 pixels as input, recorded in the metadata property ``input_format``. Metadata
    properties of the FP32 model are carried over.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from alumi_edge.model_info import read_model_info
    from alumi_edge.processing import preprocess

    if activation_type not in ACTIVATION_TYPES:
        raise ExportError(f"activation type {activation_type!r}: expected one of {', '.join(ACTIVATION_TYPES)}")
    if not calibration_images:
        raise ExportError("INT8 quantisation needs at least one calibration image")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    info = read_model_info(fp32_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = out_path.with_name(f".prep-{out_path.name}")
    preprocessed = True
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    except Exception:  # an op the optimiser cannot handle: quantise the exported graph as it is
        preprocessed = False
        shutil.copyfile(fp32_path, prepared)
    model = onnx.load(str(prepared))
    input_name = model.graph.input[0].name
    excluded = head_decode_nodes(model) if exclude_head else []
    float_nodes = (int8_graph.attention_float_nodes(model, exclude=set(excluded))
                   + int8_graph.resize_nodes(model, exclude=set(excluded))) if float_ops else []
    onnx.save(model, str(prepared))  # with the names head_decode_nodes gave unnamed nodes

    class ImageReader(CalibrationDataReader):
        """Feeds each calibration image once, letterboxed exactly as the edge runtime does."""

        def __init__(self) -> None:
            self._paths = iter(calibration_images)

        def get_next(self) -> dict | None:
            path = next(self._paths, None)
            if path is None:
                return None
            tensor, _ = preprocess(_read_bgr(Path(path)), info.input_hw)
            return {input_name: tensor}

    try:
        quantize_static(
            str(prepared), str(out_path), ImageReader(),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded + float_nodes, calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(op_types) if op_types else None,
        )
    finally:
        prepared.unlink(missing_ok=True)
    quantized = onnx.load(str(out_path))
    shared = int8_graph.share_concat_scales(quantized) if share_concat_scales else 0
    packed = int8_graph.pack_pixel_input(quantized) if pixel_input and activation_type == "QUInt8" else None
    input_format = packed.input_format if packed else int8_graph.FLOAT_FORMAT
    onnx.checker.check_model(quantized)
    save_with_metadata(quantized, out_path, {
        **read_metadata(fp32_path), "quantization": f"int8-qdq-{activation_type.lower()}",
        "quantization_excluded_nodes": len(excluded), "input_format": input_format})
    return QuantizationResult(out_path, excluded, len(calibration_images), activation_type, per_channel,
                              out_path.stat().st_size, preprocessed, float_nodes, shared, input_format)


# -- latency -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyStats:
    runs: int
    median_ms: float
    p90_ms: float
    min_ms: float

    def as_dict(self) -> dict[str, float]:
        return {"runs": self.runs, "median_ms": self.median_ms, "p90_ms": self.p90_ms, "min_ms": self.min_ms}


def time_calls(fn: Callable[[int], Any], runs: int, warmup: int = 3) -> LatencyStats:
    """Median/p90/min wall time of ``fn(i)`` over ``runs`` calls after ``warmup`` calls."""
    if runs < 1:
        raise ExportError(f"latency runs {runs}: must be at least 1")
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    return LatencyStats(runs, round(statistics.median(times), 3), round(p90, 3), round(times[0], 3))


def session_latency(model_path: Path, images: Sequence[Path], *, runs: int = 50, warmup: int = 5,
                    intra_op_threads: int = 0) -> LatencyStats:
    """CPU latency of a bare ``session.run`` on letterboxed tensors of ``images`` (cycled), in ms.

    The session is the edge runtime's (same options as on a device), so FP32 and INT8 are timed as served.
    """
    from alumi_edge.runtimes.onnx import OnnxRuntime

    if not images:
        raise ExportError("latency: no images")
    runtime = OnnxRuntime(model_path, device="cpu", intra_op_threads=intra_op_threads).load()
    try:
        tensors = [runtime.preprocess(_read_bgr(p))[0] for p in images]
        return time_calls(lambda i: runtime.forward(tensors[i % len(tensors)]), runs, warmup)
    finally:
        runtime.close()
