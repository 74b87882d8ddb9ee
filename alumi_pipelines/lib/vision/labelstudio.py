"""Label Studio documents of the review loop: the project, its review tasks, and reviewed tasks read back.

- :func:`project_title` / :func:`review_config`: one project per class map; its labelling config is the image,
  one rectangle label per class (in class-id order) and a "no defect" verdict.
- :func:`review_task`: a queued image as a task (the reason it was queued in its data) with the champion's
  boxes as a pre-annotation tagged with the model version.
- :func:`reviewed_boxes`: one annotation of a reviewed task as boxes in pixels of the frame the reviewer saw;
  the corrections parser turns a pulled task list into QA relabels with it.

Pure: JSON-ready documents in and out, no HTTP (``resources/label_studio.py`` speaks to the server).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import quoteattr

from alumi_pipelines.lib.vision.label_export import LS_FROM_NAME, LS_TO_NAME, percent_box

PROJECT_PREFIX = "alumi review"
VERDICT_NAME = "verdict"  # the Choices control of the config
NO_DEFECT = "no defect"  # its one choice: the image shows no defect (its boxes are removed)
ORIGIN = "label-studio"  # the corrections' origin (tool)

_DIGITS = 6


class ReviewDocumentError(ValueError):
    """A reviewed task or annotation that cannot be read as labels; the message names the field and rule."""


def class_map_id(classes: Sequence[str]) -> str:
    """A short, stable id of a class map (names in id order): projects are per class map."""
    if not classes:
        raise ReviewDocumentError("the class map is empty: set ALUMI_CLASSES or ingest labelled data first")
    return hashlib.sha256("\n".join(classes).encode()).hexdigest()[:8]


def project_title(classes: Sequence[str]) -> str:
    return f"{PROJECT_PREFIX} {class_map_id(classes)}"


def project_description(classes: Sequence[str]) -> str:
    return (
        f"Review queue of the alumi pipelines for the class map {', '.join(classes)}. Each task says why the image "
        "was queued; the boxes shown are the champion model's predictions. Correct them and submit; choose "
        f"'{NO_DEFECT}' for an image without defects."
    )


def review_config(classes: Sequence[str]) -> str:
    """The labelling config: the image, one rectangle label per class in class-id order, the verdict choice."""
    class_map_id(classes)
    labels = "".join(f"    <Label value={quoteattr(name)}/>\n" for name in classes)
    return (
        "<View>\n"
        '  <Header value="$reason" size="4"/>\n'
        '  <Header value="$detail" size="6"/>\n'
        f'  <Image name="{LS_TO_NAME}" value="${LS_TO_NAME}" zoom="true"/>\n'
        f'  <RectangleLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}">\n'
        f"{labels}"
        "  </RectangleLabels>\n"
        f'  <Choices name="{VERDICT_NAME}" toName="{LS_TO_NAME}" choice="single" showInline="true">\n'
        f'    <Choice value="{NO_DEFECT}"/>\n'
        "  </Choices>\n"
        "</View>\n"
    )


def prediction_result(
    boxes: Sequence[tuple[str, float, float, float, float, float]], width: int, height: int
) -> list[dict]:
    """Pre-annotation regions: ``(class_name, confidence, x_center, y_center, w, h)`` normalised boxes."""
    result = []
    for number, (class_name, confidence, x, y, w, h) in enumerate(boxes):
        px, py, pw, ph = percent_box(x, y, w, h)
        result.append(
            {
                "id": f"p{number}",
                "type": "rectanglelabels",
                "from_name": LS_FROM_NAME,
                "to_name": LS_TO_NAME,
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {"x": px, "y": py, "width": pw, "height": ph, "rotation": 0, "rectanglelabels": [class_name]},
                "score": round(float(confidence), 4),
            }
        )
    return result


def review_task(
    *,
    image_id: str,
    image_url: str,
    reason: str,
    detail: str,
    width: int,
    height: int,
    boxes: Sequence[tuple[str, float, float, float, float, float]],
    model_version: str | None,
) -> dict:
    """One task: the image, why it was queued, and (with a model) its boxes as a pre-annotation."""
    task: dict = {
        "data": {
            LS_TO_NAME: image_url,
            "image_id": image_id,
            "reason": reason,
            "detail": detail,
            "width": int(width),
            "height": int(height),
        }
    }
    if model_version is not None:
        result = prediction_result(boxes, width, height)
        score = sum(b[1] for b in boxes) / len(boxes) if boxes else 0.0
        task["predictions"] = [{"model_version": str(model_version), "score": round(score, 4), "result": result}]
    return task


def reviewed_boxes(
    annotation: Mapping, data: Mapping
) -> tuple[tuple[tuple[str, tuple[float, float, float, float]], ...], tuple[int, int] | None]:
    """An annotation's boxes as ``(class_name, (x1, y1, x2, y2))`` in pixels, and the frame they are measured in.

    A skipped task (``was_cancelled``) or the "no defect" verdict means no boxes; "no defect" together with
    boxes is contradictory and refused. The frame is the image size Label Studio reports with the regions
    (``original_width``/``original_height``), else the task's ``width``/``height``.
    """
    if annotation.get("was_cancelled"):
        return (), None
    result = annotation.get("result")
    if not isinstance(result, list):
        raise ReviewDocumentError("field 'result' must be a list of regions")
    boxes, verdicts, frame = [], [], None
    for position, region in enumerate(result):
        if not isinstance(region, dict):
            raise ReviewDocumentError(f"region {position} is not an object")
        value = region.get("value") if isinstance(region.get("value"), dict) else {}
        kind = region.get("type")
        if kind == "choices":
            verdicts.extend(value.get("choices") or [])
            continue
        if kind != "rectanglelabels":
            continue  # other controls (none in the config) carry no boxes
        names = value.get("rectanglelabels")
        if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
            raise ReviewDocumentError(f"region {region.get('id', position)}: needs exactly one rectangle label")
        if value.get("rotation") not in (None, 0, 0.0):
            raise ReviewDocumentError(
                f"region {region.get('id', position)}: rotated boxes are not supported (rotation {value['rotation']})"
            )
        width, height = _frame(region, data)
        if frame is not None and frame != (width, height):
            raise ReviewDocumentError(f"region {region.get('id', position)}: regions measured on different frames")
        frame = (width, height)
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            raise ReviewDocumentError(
                f"region {region.get('id', position)}: 'value' needs numeric x, y, width, height (percent)"
            ) from None
        box = (x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100)
        boxes.append((names[0], tuple(round(v, _DIGITS) for v in box)))
    if NO_DEFECT in verdicts:
        if boxes:
            raise ReviewDocumentError(
                f"marked '{NO_DEFECT}' but has {len(boxes)} box(es): remove the boxes or the mark"
            )
        return (), None
    return tuple(sorted(boxes)), frame


def _frame(region: Mapping, data: Mapping) -> tuple[int, int]:
    width = region.get("original_width") or data.get("width")
    height = region.get("original_height") or data.get("height")
    try:
        frame = (int(width), int(height))
    except (TypeError, ValueError):
        frame = (0, 0)
    if frame[0] <= 0 or frame[1] <= 0:
        raise ReviewDocumentError(
            f"region {region.get('id')}: no image size (original_width/original_height, or the task's width/height)"
        )
    return frame
