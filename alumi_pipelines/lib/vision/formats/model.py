"""The intermediate form every parser produces, and the constants the label import runs on."""

from __future__ import annotations

from dataclasses import dataclass, field

FORMATS = ("alumi", "yolo", "voc", "coco", "labelme")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

BATCH_MARKER = "_batch.json"  # written last into a landing batch folder: the batch is complete
EDGE_TOLERANCE = 0.02  # boxes may stick out of the image by this fraction of its side; they are clipped
SUBPIXEL = 0.5  # overshoot below this many pixels is coordinate rounding: clipped without a note
MATCH_IOU = 0.5  # two label sets of one image agree when every box has a same-class partner this close


@dataclass(frozen=True)
class SourceBox:
    """One box as the source wrote it: corners, in pixels or as fractions of the image."""

    class_name: str  # name as written; for YOLO the numeric id as a string
    x1: float
    y1: float
    x2: float
    y2: float
    normalised: bool  # True: fractions of the image; False: pixels
    origin: str = ""  # where in the annotation file, e.g. "label line 3", "object 2", "annotation id 17"


@dataclass
class AnnotatedImage:
    image_path: str  # POSIX path of the image relative to the batch root
    annotation_path: str  # the annotation file the boxes came from ("" if none)
    labelled: bool  # False: nothing labels it (no annotation, or `labelled: false`); not a background claim
    boxes: list[SourceBox]
    declared_width: int | None = None
    declared_height: int | None = None
    declared_channels: int | None = None
    extra: dict = field(default_factory=dict)  # e.g. line_id, camera_id, captured_at (native format)
    # why some of its annotation records were rejected: such an image is held out of gold, never a negative
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Rejection:
    path: str  # the offending file (relative)
    reason: str  # names the rule broken


@dataclass
class ParseResult:
    images: list[AnnotatedImage]
    rejections: list[Rejection]
    notes: list[str]
    class_names: list[str] | None = None  # YOLO: names by class id (classes.txt, data.yaml or the caller's)
