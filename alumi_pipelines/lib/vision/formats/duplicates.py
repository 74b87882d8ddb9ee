"""Byte-identical image files in one batch: kept once, with their label sets compared."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from alumi_pipelines.lib.vision.formats.model import MATCH_IOU, AnnotatedImage, Rejection, SourceBox


def merge_identical_images(
    images: Sequence[AnnotatedImage], image_ids: Mapping[str, str]
) -> tuple[list[AnnotatedImage], list[Rejection], list[str]]:
    """Keep one AnnotatedImage per image_id (content hash) when several files hold the same bytes.

    Copies whose label sets agree (same classes, every box matched at IoU >= MATCH_IOU) keep the first
    copy's labels (by path) and are noted. Copies whose labels disagree are duplicate annotations of one
    image: each annotation is rejected and the image is kept unlabelled. Images missing from
    ``image_ids`` (e.g. rejected as unreadable) pass through unchanged.
    """
    groups: dict[str, list[AnnotatedImage]] = defaultdict(list)
    for image in images:
        groups[image_ids.get(image.image_path) or f"path:{image.image_path}"].append(image)
    kept: list[AnnotatedImage] = []
    rejections: list[Rejection] = []
    notes: list[str] = []
    for copies in groups.values():
        copies = sorted(copies, key=lambda im: im.image_path)
        first = copies[0]
        if len(copies) == 1:
            kept.append(first)
            continue
        labelled = [im for im in copies if im.labelled]
        others = ", ".join(im.image_path for im in copies[1:])
        if len(labelled) <= 1 or all(labels_agree(labelled[0], im) for im in labelled[1:]):
            chosen = labelled[0] if labelled else first
            kept.append(chosen)
            rest = ", ".join(im.image_path for im in copies if im is not chosen)
            notes.append(
                f"{chosen.image_path}: byte-identical copies {rest} kept once"
                + (" (their labels agree; kept this copy's)" if len(labelled) > 1 else "")
            )
            continue
        names = [im.image_path for im in copies]
        for im in labelled:
            rejections.append(
                Rejection(
                    im.annotation_path,
                    f"duplicate annotations: {im.image_path} is byte-identical to "
                    f"{', '.join(n for n in names if n != im.image_path)} and their labels disagree",
                )
            )
        kept.append(AnnotatedImage(first.image_path, "", False, [], extra=dict(first.extra)))
        notes.append(f"{first.image_path}: byte-identical copies {others} with conflicting labels: kept unlabelled")
    kept.sort(key=lambda im: im.image_path)
    return kept, rejections, notes


def labels_agree(a: AnnotatedImage, b: AnnotatedImage) -> bool:
    if len(a.boxes) != len(b.boxes):
        return False
    if any(box.normalised != a.boxes[0].normalised for box in a.boxes + b.boxes):
        return False
    unmatched = list(b.boxes)
    for box in a.boxes:
        partners = [o for o in unmatched if o.class_name.strip().lower() == box.class_name.strip().lower()]
        best = max(partners, key=lambda o: _iou(box, o), default=None)
        if best is None or _iou(box, best) < MATCH_IOU:
            return False
        unmatched.remove(best)
    return True


def _iou(a: SourceBox, b: SourceBox) -> float:
    from alumi_pipelines.lib.boxes import iou_xyxy  # here, not at the top: it imports numpy

    return iou_xyxy((a.x1, a.y1, a.x2, a.y2), (b.x1, b.y1, b.x2, b.y2))
