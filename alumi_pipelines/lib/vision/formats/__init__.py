"""Label-format importers: YOLO, Pascal VOC, COCO, LabelMe and the native "alumi" sidecars.

Every parser turns a landing batch (a listing of relative POSIX paths plus a byte reader) into one
intermediate form: an ``AnnotatedImage`` per image file with the boxes as the source wrote them, and
a ``Rejection`` per bad record. ``to_canonical_rows`` then resolves classes, normalises and checks
the boxes against the image's real size and emits rows of the canonical label table. No image is
decoded here: the caller supplies real sizes.

Modules:

- ``model``: ``SourceBox``, ``AnnotatedImage``, ``Rejection``, ``ParseResult`` and the constants
  (``FORMATS``, ``IMAGE_SUFFIXES``, ``BATCH_MARKER``, ``EDGE_TOLERANCE``, ``SUBPIXEL``, ``MATCH_IOU``).
- ``parse``: ``parse_batch``, which hands a batch to its format's parser.
- ``pairing``: ``Batch`` (file index, reading, records found) and matching annotations to images;
  ``path_trick`` for unsafe image names.
- ``values``: small value readers (finite numbers, positive ints, JSON ids, box bounds).
- ``yolo``, ``voc``, ``coco``, ``labelme``, ``alumi``: one parser per format.
- ``canonical``: ``source_class_map`` and ``to_canonical_rows`` (canonical label rows of one image).
- ``duplicates``: ``merge_identical_images`` for byte-identical image files and their label sets.
"""

from __future__ import annotations

from alumi_pipelines.lib.vision.formats.canonical import source_class_map, to_canonical_rows
from alumi_pipelines.lib.vision.formats.duplicates import merge_identical_images
from alumi_pipelines.lib.vision.formats.model import (
    BATCH_MARKER,
    FORMATS,
    IMAGE_SUFFIXES,
    AnnotatedImage,
    ParseResult,
    SourceBox,
)
from alumi_pipelines.lib.vision.formats.pairing import path_trick
from alumi_pipelines.lib.vision.formats.parse import parse_batch

__all__ = [
    "BATCH_MARKER",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "AnnotatedImage",
    "ParseResult",
    "SourceBox",
    "merge_identical_images",
    "parse_batch",
    "path_trick",
    "source_class_map",
    "to_canonical_rows",
]
