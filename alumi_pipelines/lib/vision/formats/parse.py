"""``parse_batch``: a landing batch through its format's parser, into one ``ParseResult``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from alumi_pipelines.lib.vision.formats.alumi import parse_alumi
from alumi_pipelines.lib.vision.formats.coco import parse_coco
from alumi_pipelines.lib.vision.formats.labelme import parse_labelme
from alumi_pipelines.lib.vision.formats.model import FORMATS, ParseResult
from alumi_pipelines.lib.vision.formats.pairing import Batch
from alumi_pipelines.lib.vision.formats.voc import parse_voc
from alumi_pipelines.lib.vision.formats.yolo import parse_yolo


def parse_batch(
    fmt: str,
    files: Sequence[str],
    read: Callable[[str], bytes],
    class_names: Sequence[str] | None = None,
) -> ParseResult:
    """Parse every annotation of a landing batch in ``fmt``; one AnnotatedImage per image file."""
    if fmt not in FORMATS:
        raise ValueError(f"label format {fmt!r} is not one of {', '.join(FORMATS)}")
    batch = Batch(files, read)
    {
        "yolo": parse_yolo,
        "voc": parse_voc,
        "coco": parse_coco,
        "labelme": parse_labelme,
        "alumi": parse_alumi,
    }[fmt](batch, list(class_names) if class_names is not None else None)
    return batch.result()
