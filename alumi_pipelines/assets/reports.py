"""Drift reports in the lake, the same way for every drift check: the report, then the pointer sensors read.

``<report>.html`` and ``<report>.json`` are written first, ``latest.json`` last, so ``drift_sensor`` never sees a
pointer to a report that is not there.
"""

from collections.abc import Callable, Mapping
from typing import Any

from alumi_pipelines.resources.lake import Lake


def publish_report(
    lake: Lake,
    report_key: Callable[[str, str], str],
    latest_key: str,
    report_id: str,
    html: bytes,
    document: bytes | Mapping[str, Any],
    latest: Mapping[str, Any],
    *,
    newest_by: str | None = None,
) -> dict:
    """Write the report (HTML + JSON document) and the latest pointer ``{report_id, html, json, **latest}``.

    With ``newest_by``, the pointer only moves forward in that field (e.g. ``day``): publishing the report of an
    older day again writes the report but leaves the pointer on the newer one. Returns the pointer written (or
    that would have been written).
    """
    html_key = lake.write_bytes(report_key(report_id, "html"), html)
    json_key = (
        lake.write_bytes(report_key(report_id, "json"), document)
        if isinstance(document, bytes)
        else lake.write_json(report_key(report_id, "json"), document)
    )
    pointer = {"report_id": report_id, **latest, "html": html_key, "json": json_key}
    if newest_by is not None and lake.exists(latest_key):
        if str(lake.read_json(latest_key).get(newest_by, "")) > str(pointer[newest_by]):
            return pointer
    lake.write_json(latest_key, pointer)
    return pointer
