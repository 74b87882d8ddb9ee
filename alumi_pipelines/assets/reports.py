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


# -- links a browser opens, and the report in MLflow ------------------------------------------------
REPORT_LINK_HOURS = 7 * 24  # how long an Azure report link stays valid (read-only SAS)
DRIFT_EXPERIMENT = "alumi-drift"
REPORT_ID_TAG = "alumi.report_id"


def report_links(lake: Lake, key: str, hours: int = REPORT_LINK_HOURS, name: str = "report") -> dict[str, Any]:
    """Metadata entries that open the report ``key`` in a browser.

    On an object-store lake, ``<name>`` is a read-only SAS URL valid for ``hours`` (stated in ``<name>_link``): no
    storage credential is needed to open it. On a local lake it is the file's ``file://`` URL (paste it in the
    address bar: browsers do not follow file links from a web page), and ``<name>_path`` the file itself.
    """
    import datetime as dt

    from dagster import MetadataValue

    shared = lake.share_url(key, hours)
    if shared is None:
        return {name: MetadataValue.url(lake.uri(key)), f"{name}_path": MetadataValue.path(str(lake.local_path(key)))}
    until = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)
    return {
        name: MetadataValue.url(shared),
        f"{name}_link": MetadataValue.text(f"read-only link, valid {hours} h (until {until:%Y-%m-%d %H:%M} UTC)"),
        f"{name}_path": MetadataValue.path(lake.uri(key)),
    }


def log_report_run(
    registry,
    report_id: str,
    html: bytes,
    *,
    run_name: str,
    tags: Mapping[str, Any],
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """Log the HTML report to its own run of the ``alumi-drift`` experiment; metadata entries that reach it.

    One run per report (found again by its ``alumi.report_id`` tag, so re-materialising the same report adds no
    run), tagged with the champion version and its training run: a data scientist compares drift over time in
    one experiment (``drift_share`` is a metric of every run) and goes from a report to the model it judged,
    while the champion's training run stays the unchanged record of how the model was made.
    """
    import tempfile
    from pathlib import Path

    from dagster import MetadataValue

    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry

    drift = MlflowRegistry(
        tracking_uri=registry.tracking_uri,
        artifact_location=registry.artifact_location,
        experiment_name=DRIFT_EXPERIMENT,
        model_name=registry.model_name,
        ui_url=registry.ui_url,
    )
    run = drift.find_run(REPORT_ID_TAG, report_id)
    if run is None:
        with drift.run(run_name, tags={**tags, REPORT_ID_TAG: report_id}) as created:
            run = created
    run.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{report_id}.html"
        path.write_bytes(html)
        run.log_artifact(path, "report")
    artifact = f"{run.artifact_uri}/report/{report_id}.html"
    url = drift.run_url(run.run_id)
    where = f"experiment {DRIFT_EXPERIMENT}, run {run.run_id}, artifact report/{report_id}.html"
    out: dict[str, Any] = {
        "mlflow_run": MetadataValue.url(url) if url else MetadataValue.text(where + " (ALUMI_MLFLOW_UI_URL: a link)"),
        "mlflow_run_id": MetadataValue.text(run.run_id),
    }
    if artifact.startswith(("file://", "http://", "https://")):
        out["mlflow_report"] = MetadataValue.url(artifact)
    return out
