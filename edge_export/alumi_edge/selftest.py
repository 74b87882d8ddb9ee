"""Self-test of a downloaded release: run its model on the bundled sample image, compare with the expected boxes.

``sample_expected`` JSON: ``{"conf": 0.25, "iou": 0.7, "max_det": 300, "boxes": [{"class_id",
"class_name", "confidence", "x1", "y1", "x2", "y2"}, ...]}`` in original-image pixels, written by the
pipeline from the same model. An optional ``"roles": {"model_int8": {"boxes": [...]}}`` holds the
expected boxes of the release's other model files on the same image; each one the release carries is
tested too, so whichever model a device serves has been run before the switch (older devices ignore
the key). Boxes whose confidence lies within ``conf_tol`` of the threshold may
appear on one side only (numerical noise of a different runtime); every other box must match one of
the same class with IoU ≥ ``iou_min`` and confidence within ``conf_tol``.

The boxes alone can prove nothing: a model that detects nothing on the sample passes "0/0 boxes matched". So the
document also carries the model's raw output on the sample, ``"raw": {"top_scores": [...], "tolerance": 0.15}``
(and ``roles.<role>.raw``): the :data:`RAW_TOP_K` highest class scores of the network's output tensor, before any
threshold, compared element by element as logits (``log(p / (1 - p))``) within the tolerance, so small scores are
compared as strictly as large ones (0.004 against 0.0 fails; 0.02 absolute would pass it). A model with neither
expected boxes nor informative raw scores (a top score of at least :data:`RAW_FLOOR`) is refused as untestable, and
the export refuses to publish such a release.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alumi_edge.manifest import Manifest, ManifestError, ReleaseError
from alumi_edge.processing import iou_xyxy
from alumi_edge.runtimes.base import Box, Runtime

RAW_TOP_K = 16
RAW_TOLERANCE = 0.15  # in logits: about 0.04 at a score of 0.5, 0.0015 at 0.01
RAW_FLOOR = 1e-6  # top scores all below this carry nothing to compare


class SelfTestError(ReleaseError):
    """The release's model does not reproduce its expected detections."""


def raw_top_scores(output: np.ndarray, num_classes: int, end_to_end: bool = False, k: int = RAW_TOP_K) -> list[float]:
    """The ``k`` highest class scores of a raw YOLO output, descending (before any threshold or NMS).

    ``(1, 4 + nc, anchors)`` outputs: the best class score of each anchor; end-to-end ``(1, n, 6)``: column 4.
    """
    out = np.asarray(output, dtype=np.float64)[0]
    if end_to_end:
        scores = out[:, 4]
    else:
        if out.shape[0] != 4 + num_classes and out.shape[1] == 4 + num_classes:
            out = out.T
        scores = out[4 : 4 + num_classes].max(axis=0)
    top = np.sort(scores.ravel())[::-1][:k]
    return [float(f"{float(v):.7g}") for v in top]  # significant digits: small scores keep their information


def sample_raw_scores(runtime: Runtime, image_bgr: np.ndarray, k: int = RAW_TOP_K) -> list[float]:
    """:func:`raw_top_scores` of ``runtime`` on one image (its own preprocessing, one forward pass)."""
    tensor, _ = runtime.preprocess(image_bgr)
    return raw_top_scores(runtime.forward(tensor), runtime.info.num_classes, runtime.info.end_to_end, k)


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1.0 - 1e-12)
    return math.log(p / (1.0 - p))


def raw_informative(raw: dict | None) -> bool:
    """Whether expected raw scores can tell models apart (some top score at least :data:`RAW_FLOOR`)."""
    return raw is not None and max(float(v) for v in raw["top_scores"]) >= RAW_FLOOR


def compare_raw(actual: Sequence[float], expected: dict) -> list[str]:
    """Problems of raw top scores against an expected ``{"top_scores", "tolerance"}`` (empty when they agree);
    the tolerance applies to logits."""
    want = [float(v) for v in expected["top_scores"]]
    tol = float(expected.get("tolerance", RAW_TOLERANCE))
    if len(actual) != len(want):
        return [f"raw output has {len(actual)} top scores, expected {len(want)}"]
    gaps = [abs(_logit(a) - _logit(w)) for a, w in zip(actual, want)]
    worst = max(range(len(want)), key=gaps.__getitem__, default=None)
    if worst is not None and gaps[worst] > tol:
        return [
            f"raw output differs: top score {worst + 1} is {actual[worst]:.6g}, expected {want[worst]:.6g} "
            f"({gaps[worst]:.3f} apart as logits, tolerance {tol})"
        ]
    return []


@dataclass
class SelfTestReport:
    expected: int
    detected: int
    matched: int
    problems: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # the release files that were run
    raw_compared: int = 0  # raw top scores compared (over all models)

    @property
    def passed(self) -> bool:
        return not self.problems


def _iou(a: Box, b: dict) -> float:
    """IoU of a detection and an expected box (a dict with ``x1``, ``y1``, ``x2``, ``y2``)."""
    return iou_xyxy((a.x1, a.y1, a.x2, a.y2), (b["x1"], b["y1"], b["x2"], b["y2"]))


def compare_detections(
    actual: list[Box], expected: list[dict], conf_threshold: float, conf_tol: float = 0.02, iou_min: float = 0.9
) -> SelfTestReport:
    """Match detections to expected boxes (same class, best IoU); list every mismatch."""
    report = SelfTestReport(expected=len(expected), detected=len(actual), matched=0)
    unmatched_actual = list(range(len(actual)))
    for exp in sorted(expected, key=lambda e: -e["confidence"]):
        candidates = [j for j in unmatched_actual if actual[j].class_id == exp["class_id"]]
        best = max(candidates, key=lambda j: _iou(actual[j], exp), default=None)
        if best is not None and _iou(actual[best], exp) >= iou_min:
            unmatched_actual.remove(best)
            report.matched += 1
            delta = abs(actual[best].confidence - exp["confidence"])
            if delta > conf_tol:
                report.problems.append(
                    f"expected {exp['class_name']} box at ({exp['x1']:.1f}, {exp['y1']:.1f}) has confidence "
                    f"{actual[best].confidence:.4f}, expected {exp['confidence']:.4f} (tolerance {conf_tol})"
                )
        elif exp["confidence"] > conf_threshold + conf_tol:
            report.problems.append(
                f"expected {exp['class_name']} box ({exp['x1']:.1f}, {exp['y1']:.1f}, {exp['x2']:.1f}, "
                f"{exp['y2']:.1f}) conf {exp['confidence']:.3f} was not detected"
            )
    for j in unmatched_actual:
        box = actual[j]
        if box.confidence > conf_threshold + conf_tol:
            report.problems.append(
                f"unexpected {box.class_name} box ({box.x1:.1f}, {box.y1:.1f}, {box.x2:.1f}, {box.y2:.1f}) "
                f"conf {box.confidence:.3f}"
            )
    return report


def _check_boxes(where: str, boxes) -> None:
    if not isinstance(boxes, list):
        raise ManifestError(f"{where}: expected a 'boxes' list")
    for i, box in enumerate(boxes):
        missing = [k for k in ("class_id", "confidence", "x1", "y1", "x2", "y2") if k not in box]
        if missing:
            raise ManifestError(f"{where}: boxes[{i}] lacks {', '.join(missing)}")
        box.setdefault("class_name", str(box["class_id"]))


def _check_raw(where: str, raw) -> None:
    if raw is None:
        return
    scores = raw.get("top_scores") if isinstance(raw, dict) else None
    if not isinstance(scores, list) or not scores or not all(isinstance(v, int | float) for v in scores):
        raise ManifestError(f"{where}: 'raw' must be an object with a non-empty 'top_scores' list of numbers")
    if not isinstance(raw.get("tolerance", RAW_TOLERANCE), int | float):
        raise ManifestError(f"{where}: 'raw.tolerance' must be a number")


def load_expected(path: Path) -> dict:
    """Parse a sample_expected file, naming the field that is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path.name}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("boxes"), list):
        raise ManifestError(f"{path.name}: expected an object with a 'boxes' list")
    _check_boxes(path.name, data["boxes"])
    _check_raw(path.name, data.get("raw"))
    roles = data.setdefault("roles", {})
    if not isinstance(roles, dict):
        raise ManifestError(f"{path.name}: 'roles' must be an object of role: {{boxes}}")
    for role, entry in roles.items():
        _check_boxes(f"{path.name} roles.{role}", entry.get("boxes") if isinstance(entry, dict) else None)
        _check_raw(f"{path.name} roles.{role}", entry.get("raw"))
    return data


def run_self_test(
    release_dir: str | Path, manifest: Manifest, runtime_factory: Callable[[Path], Runtime] | None = None
) -> SelfTestReport:
    """Run the release's model on its sample image; raises SelfTestError when it does not match."""
    from alumi_edge.imaging import decode_image
    from alumi_edge.runtimes.onnx import OnnxRuntime

    release_dir = Path(release_dir)
    model, image, expected_file = (manifest.file_for_role(r) for r in ("model", "sample_image", "sample_expected"))
    if image is None or expected_file is None:
        raise ManifestError(
            f"release {manifest.version}: a self-test needs files with roles 'sample_image' and 'sample_expected'"
        )
    expected = load_expected(release_dir / expected_file.path)
    conf = float(expected.get("conf", 0.25))
    iou = float(expected.get("iou", 0.7))
    max_det = int(expected.get("max_det", 300))
    factory = runtime_factory or (lambda path: OnnxRuntime(path, device="cpu").load())
    try:
        picture = decode_image((release_dir / image.path).read_bytes())
    except Exception as exc:
        raise SelfTestError(f"release {manifest.version}: sample image {image.path} does not decode: {exc}") from exc
    cases = [(model, expected["boxes"], expected.get("raw"))]
    for role, entry in expected["roles"].items():
        other = manifest.file_for_role(role)
        if other is not None:
            cases.append((other, entry["boxes"], entry.get("raw")))
    total = SelfTestReport(expected=0, detected=0, matched=0)
    for file, boxes, raw in cases:
        if not boxes and not raw_informative(raw):
            raise SelfTestError(
                f"release {manifest.version}: the self-test of {file.path} has nothing to compare (no expected boxes "
                f"on {image.path} and no informative raw scores): a model that detects nothing would pass it"
            )
        try:
            runtime = factory(release_dir / file.path)
            result = runtime.detect(picture, conf=conf, iou=iou, max_det=max_det)
            scores = sample_raw_scores(runtime, picture, len(raw["top_scores"])) if raw is not None else None
        except ReleaseError:
            raise
        except Exception as exc:
            raise SelfTestError(
                f"release {manifest.version}: {file.path} failed to run on {image.path}: {exc}"
            ) from exc
        if list(runtime.info.names) != list(manifest.classes):
            raise SelfTestError(
                f"release {manifest.version}: {file.path} classes {list(runtime.info.names)} differ from the "
                f"manifest's {list(manifest.classes)}"
            )
        report = compare_detections(result.boxes, boxes, conf_threshold=conf)
        if raw is not None:
            report.problems.extend(compare_raw(scores, raw))
            total.raw_compared += len(scores)
        if not report.passed:
            raise SelfTestError(
                f"release {manifest.version}: self-test of {file.path} on {image.path} failed: "
                + "; ".join(report.problems[:5])
            )
        total.expected += report.expected
        total.detected += report.detected
        total.matched += report.matched
        total.models.append(file.path)
    return total
