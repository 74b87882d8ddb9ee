"""Label corrections from edge operators and QA: parse, validate, apply to the canonical labels.

The loop, one module per step:

- :mod:`.records` — the :class:`Correction` record, its vocabulary, rejects, timestamps and tables.
- :mod:`.parsing` — incoming files (edge JSONL, QA CSV, QA COCO) → corrections and rejects.
- :mod:`.validation` — corrections checked against the lake's images and the class map.
- :mod:`.application` — valid corrections applied to the processed labels → overlay and changes.

parse → validate → apply; QA beats operator, newer beats older.
"""

from alumi_pipelines.lib.vision.corrections.application import apply, corrected_labels
from alumi_pipelines.lib.vision.corrections.parsing import parse_incoming
from alumi_pipelines.lib.vision.corrections.records import (
    Correction,
    corrections_frame,
    corrections_from_frame,
    rejects_frame,
)
from alumi_pipelines.lib.vision.corrections.validation import validate

__all__ = [
    "Correction",
    "apply",
    "corrected_labels",
    "corrections_frame",
    "corrections_from_frame",
    "parse_incoming",
    "rejects_frame",
    "validate",
]
